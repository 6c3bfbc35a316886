#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz_crqd (tests/fuzz/corpus/crqd).

Input format (see crqd_fuzzer.cc): ops of {kind u8, slot u8, ...}. The seeds
walk the honest protocol of partitions 1, 2 and 3 (HELLO, TCEs, queues,
messages, copies, a death with partners listening, a restart) and the
refusals (garbage, short, unsealed and duplicate HELLOs, failing host
resources, unknown opcodes, out-of-range arguments), for the fuzzer to
mutate.
"""
import os
import struct
import sys

MAGIC, VERSION = 0x43525144, 2
PAGE = 4096
# Opcode selectors (kOpcodes in the fuzzer).
REG, FREE, SEND, ENABLE, SIGNAL, PUT, GET, STUFF, COPY, INDIRECT, VIOCTL = range(11)
# Endpoint selectors: (partition, unit, liobn).
EP_1, EP_2A, EP_3, EP_2B = range(4)


def sel(kind, perms=None, misalign=False):
    """An argument selector byte: kind = sel % 10, TCE perms = sel >> 6."""
    for s in range(256):
        if s % 10 != kind:
            continue
        if perms is not None and s >> 6 != perms:
            continue
        if kind == 3 and bool(s & 0x80) != misalign:
            continue
        return s
    raise ValueError(kind)


def small(v): return bytes([sel(0), v])
def unit(ep): return bytes([sel(1), ep])
def liobn(ep): return bytes([sel(2), ep])
def ioba(page): return bytes([sel(3), page])
def tce(page, perms): return bytes([sel(4, perms), page])
def length(shift): return bytes([sel(5), shift])
def raw(v): return bytes([sel(6), 0]) + struct.pack("<Q", v)
def real(page): return bytes([sel(7), page])
def huge(v=0): return bytes([sel(8), v])
def zero(): return bytes([sel(9), 0])


def connect(slot, pid_index, pages, memfd_pages=None, flags=3, raw_hello=None):
    hello = raw_hello if raw_hello is not None else struct.pack("<IIIIQ", MAGIC, VERSION, pid_index, 0, pages)
    return bytes([0, slot, flags, memfd_pages if memfd_pages is not None else pages]) + hello


def die(slot): return bytes([1, slot])


def hcall(slot, op, *args, raw_opcode=None):
    args = list(args) + [zero()] * (8 - len(args))
    head = bytes([2, slot, op if raw_opcode is None else 0xF0])
    if raw_opcode is not None:
        head += struct.pack("<Q", raw_opcode)
    return head + b"".join(args)


def write(slot, offset, data): return bytes([3, slot]) + struct.pack("<HB", offset // 8, len(data)) + data


def tce_list(slot, page, entries):
    return bytes([4, slot, page, len(entries)]) + b"".join(bytes([p, perms]) for p, perms in entries)


def control(fault, ep, n): return bytes([5, 0, fault, ep, n])


def consume(slot, page, count): return bytes([6, slot, page, count])


def queue(slot, ep, io_page, real_page):
    """The partition maps a page and registers its CRQ there."""
    return hcall(slot, PUT, liobn(ep), ioba(io_page), tce(real_page, 3)) + \
        hcall(slot, REG, unit(ep), ioba(io_page), length(0)) + hcall(slot, SIGNAL, unit(ep), small(1))


PAIR_A = (connect(0, 0, 8) + connect(1, 1, 8) + queue(0, EP_1, 1, 1) + queue(1, EP_2A, 1, 2))

SEEDS = {
    "pair_a_traffic": PAIR_A +
    hcall(0, SEND, unit(EP_1), raw(0xC001000000000000), raw(0)) +
    hcall(1, SEND, unit(EP_2A), raw(0xC002000000000000), raw(0)) +
    hcall(0, SEND, unit(EP_1), raw(0x80AABBCCDDEEFF00), raw(0x1122334455667788)) +
    consume(1, 2, 4) + consume(0, 1, 4) +
    hcall(0, PUT, liobn(EP_1), ioba(2), tce(3, 3)) + write(0, 3 * PAGE, b"client data" * 4) +
    hcall(1, PUT, liobn(EP_2A), ioba(2), tce(4, 3)) +
    hcall(1, COPY, length(0), liobn(EP_1), ioba(2), liobn(EP_2A), ioba(2)) +
    hcall(1, COPY, length(0), liobn(EP_2A), ioba(2), liobn(EP_1), ioba(2)) +
    hcall(0, GET, liobn(EP_1), ioba(2)) + hcall(0, FREE, unit(EP_1)) + queue(0, EP_1, 1, 1) +
    die(0) + consume(1, 2, 8) + hcall(1, COPY, length(0), liobn(EP_1), ioba(2), liobn(EP_2A), ioba(2)),
    "tce_indirect": connect(0, 0, 8) +
    tce_list(0, 3, [(1, 3), (2, 1), (5, 2), (7, 3)]) +
    hcall(0, INDIRECT, liobn(EP_1), ioba(0), real(3), small(4)) +
    hcall(0, GET, liobn(EP_1), ioba(3)) +
    hcall(0, INDIRECT, liobn(EP_1), ioba(14), real(3), small(4)) +
    hcall(0, INDIRECT, liobn(EP_1), ioba(0), real(9), small(4)) +
    hcall(0, INDIRECT, liobn(EP_1), ioba(0), raw(3 * PAGE + 8), small(2)) +
    tce_list(0, 4, [(19, 3), (1, 0)]) + hcall(0, INDIRECT, liobn(EP_1), ioba(0), real(4), small(2)) +
    hcall(0, STUFF, liobn(EP_1), ioba(0), tce(4, 1), small(16)) +
    hcall(0, STUFF, liobn(EP_1), ioba(8), tce(4, 2), huge()) +
    hcall(0, PUT, liobn(EP_2A), ioba(0), tce(1, 3)),
    "bad_hellos": connect(0, 0, 8, raw_hello=b"\xff" * 24, flags=0x13) +
    connect(0, 0, 8, flags=0x23) + connect(0, 0, 8, flags=2) + connect(0, 0, 8, flags=1) +
    connect(0, 0, 8, memfd_pages=4) + connect(0, 0, 0) + connect(0, 0, 8, flags=7) + connect(0, 0, 8, flags=0xB) +
    connect(0, 0, 8, raw_hello=struct.pack("<IIIIQ", MAGIC, VERSION, 1, 0, 8 * PAGE + 1), flags=0x13) +
    connect(0, 0, 8, raw_hello=struct.pack("<IIIIQ", MAGIC, 1, 1, 0, 8 * PAGE), flags=0x13) +
    connect(0, 0, 8, raw_hello=struct.pack("<IIIIQ", MAGIC, VERSION, 0xFFFFFFFF, 0, 2 ** 64 - PAGE), flags=0x13) +
    connect(0, 0, 8) + connect(1, 0, 8) + connect(0, 1, 8, flags=0x43) + hcall(1, GET, liobn(EP_1), ioba(0)) +
    hcall(0, GET, liobn(EP_1), ioba(0)),
    "hostile_calls": PAIR_A + connect(2, 3, 4) +
    hcall(0, 0, raw_opcode=0x2A8) + hcall(0, 0, raw(1), raw_opcode=0xFFFFFFFFFFFFFFFF) +
    hcall(0, VIOCTL, huge(), huge()) + hcall(2, SEND, unit(EP_1), raw(0x8000000000000000)) +
    hcall(2, PUT, liobn(EP_3), ioba(0), tce(1, 3)) +
    hcall(0, COPY, huge(), liobn(EP_1), ioba(0), liobn(EP_2A), ioba(0)) +
    hcall(0, COPY, length(7), liobn(EP_1), ioba(0), liobn(EP_3), ioba(0)) +
    hcall(1, COPY, length(0), liobn(EP_1), ioba(0, ), liobn(EP_2A), bytes([sel(3, misalign=True), 3])) +
    hcall(0, REG, unit(EP_1), ioba(0), huge()) + hcall(0, REG, unit(EP_2A), ioba(1), length(0)) +
    hcall(0, PUT, liobn(EP_1), huge(), tce(1, 3)) + hcall(0, PUT, liobn(EP_1), ioba(0), tce(19, 3)) +
    hcall(0, SIGNAL, unit(EP_1), huge()) + hcall(3, GET, liobn(EP_1), ioba(0)),
    "pair_b_and_faults": connect(0, 0, 8) + connect(1, 1, 12) + connect(2, 2, 8) +
    queue(0, EP_1, 1, 1) + queue(1, EP_2A, 1, 2) + queue(1, EP_2B, 3, 5) + queue(2, EP_3, 1, 1) +
    control(1, EP_2B, 2) + hcall(1, ENABLE, unit(EP_2B)) + hcall(1, ENABLE, unit(EP_2B)) +
    hcall(1, ENABLE, unit(EP_2B)) + control(2, EP_1, 1) + hcall(0, FREE, unit(EP_1)) +
    control(3, EP_2A, 1) + control(4, EP_2A, 1) + hcall(0, SEND, unit(EP_1), raw(0x8001000000000000)) +
    hcall(0, SEND, unit(EP_1), raw(0x8002000000000000)) + control(5, EP_3, 3) + control(0, EP_3, 0) +
    hcall(2, SEND, unit(EP_3), raw(0x8003000000000000)) + die(1) + consume(0, 1, 2) + consume(2, 1, 2) +
    hcall(2, SEND, unit(EP_3), raw(0x8004000000000000)),
    "restart": PAIR_A + hcall(1, PUT, liobn(EP_2A), ioba(3), tce(7, 3)) + die(1) + connect(1, 1, 4) +
    hcall(1, GET, liobn(EP_2A), ioba(3)) + hcall(1, PUT, liobn(EP_2A), ioba(3), tce(7, 3)) +
    hcall(0, COPY, length(0), liobn(EP_1), ioba(1), liobn(EP_2A), ioba(3)) + queue(1, EP_2A, 1, 2) +
    hcall(0, SEND, unit(EP_1), raw(0x8005000000000000)) + die(0) + die(1),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "crqd")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
