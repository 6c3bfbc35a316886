#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz_xen_grants (tests/fuzz/corpus/xen_grants).

Input format (see xen_grants_fuzzer.cc): 8-byte ops {kind u8, a u8, b u16,
c u32}, little-endian. The seeds walk the honest protocol (grant, map,
copy, unmap, end access) and a few refusals, for the fuzzer to mutate.
"""
import os
import struct
import sys


def op(kind, a=0, b=0, c=0):
    return struct.pack("<BBHI", kind, a, b, c)


def grant(ref, frame, readonly=False, to_grantee=True):
    return op(4, 1 if readonly else 0, ref, (frame << 2) | (4 if to_grantee else 0))


def copy_seg(ref, off, flags, len_units, to_granter, local_frame, self_local=True):
    return struct.pack("<HHBBBB", ref, off, flags, len_units, (1 if to_granter else 0) | (0 if self_local else 2),
                       local_frame)


SEEDS = {
    "map_unmap": [grant(8, 10), op(1, 0, 8), op(5, 0, 8), op(2, 0, 0), op(5, 0, 8)],
    "readonly": [grant(9, 11, readonly=True), op(1, 0, 9), op(1, 1, 9), op(2, 0, 0)],
    "copy_both_ways": [grant(10, 12), op(3, 1, 0), copy_seg(10, 0, 1, 60, False, 3),
                       copy_seg(10, 100, 2, 30, True, 4)],
    "copy_refusals": [grant(11, 13, readonly=True), op(3, 3, 0), copy_seg(11, 4000, 1, 60, False, 3),
                      copy_seg(11, 0, 2, 10, True, 5), copy_seg(2000, 0, 1, 1, False, 1),
                      copy_seg(11, 0, 1, 1, False, 11, self_local=False)],
    "raw_and_setup": [op(0, 0x19, 12, 0x000a0302), op(1, 0, 12), op(6, 0, 3, 5), op(6, 1, 1, 0), op(7, 0),
                      op(7, 1, 2), op(1, 0, 8)],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "xen_grants")
    os.makedirs(out, exist_ok=True)
    for name, ops in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"".join(ops))


if __name__ == "__main__":
    main()
