#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz_xenemud (tests/fuzz/corpus/xenemud).

Input format (see xenemud_fuzzer.cc): ops of {kind u8, slot u8, ...}. The
seeds walk the honest protocol (a frontend domain granting pool pages, a
backend in dom0 mapping and copying them, event channels both ways, the
event ring), a granter dying while mapped (a zombie, its id refused until
the backend unmaps), and the refusals (garbage, short and oversized HELLOs,
the pool cap, failing host resources, forged handles, copy segments and
map requests pointing anywhere), for the fuzzer to mutate.
"""
import os
import struct
import sys

MAGIC, VERSION = 0x58454E44, 1
SELF = 0x7FF0
# kDomids in the fuzzer: selector -> domid.
D0, D1, D2, D3, D1234, D4, D12345, DSELF = range(8)
(SETUP, COPY, UNMAP, ALLOC_UNBOUND, BIND, SEND, CLOSE, UNMASK, PENDING) = range(1, 10)
GREF_SRC, GREF_DST = 1, 2


def sel(kind, hi=0):
    for s in range(256):
        if s % 10 == kind and s >> 4 >= hi:
            return s
    raise ValueError(kind)


def small(v): return bytes([sel(0), v])
def dom(d): return bytes([sel(1), d])
def handle(i): return bytes([sel(2), i])
def port(p): return bytes([sel(3), p])
def raw(v): return bytes([sel(4), 0]) + struct.pack("<Q", v)
def count(n): return bytes([sel(5), n])
def huge(v=0): return bytes([sel(7), v])
def zero(): return bytes([sel(9), 0])


def connect(slot, domid, frames=1, pages=8, pool=4, memfd_pages=None, flags=3, raw_hello=None):
    hello = raw_hello if raw_hello is not None else \
        struct.pack("<IIIIQII", MAGIC, VERSION, domid, frames, pages, pool, 0)
    return bytes([0, slot, flags, memfd_pages if memfd_pages is not None else pages]) + hello


def die(slot): return bytes([1, slot])


def hcall(slot, op, *args, raw_opcode=None):
    args = list(args) + [zero()] * (8 - len(args))
    head = bytes([2, slot, op if raw_opcode is None else 0xF0])
    if raw_opcode is not None:
        head += struct.pack("<Q", raw_opcode)
    return head + b"".join(args)


def write(slot, offset, data): return bytes([3, slot]) + struct.pack("<HB", offset // 8, len(data)) + data


def grant(slot, ref, grantee, pool_page, readonly=False, absolute=False, raw_flags=None):
    fsel = 3 if raw_flags is not None else (1 if readonly else 0)
    if absolute:
        fsel |= 0x80
    return bytes([4, slot]) + struct.pack("<HBBBH", ref, grantee, pool_page, fsel, raw_flags or 0)


def end_access(slot, ref): return bytes([4, slot]) + struct.pack("<HBBBH", ref, 0, 0, 2, 0)


def gref(ref, domid_sel, offset_units=0):
    """A copy side naming a grant: (sel, v) with v >> 8 the domid selector."""
    return bytes([1 | (offset_units << 3)]) + struct.pack("<H", domid_sel << 8 | ref)


def frame(gmfn, offset=None):
    """A copy side naming one of the caller's own frames (DOMID_SELF)."""
    if offset is None:
        return bytes([2]) + struct.pack("<H", gmfn)
    return bytes([6]) + struct.pack("<HH", gmfn, offset)


def frame_of(gmfn, domid_sel):
    """A frame of another domain: not allowed (permission denied)."""
    return bytes([0]) + struct.pack("<H", domid_sel << 8 | gmfn)


def segment(slot, index, src, dst, units=15, flags=GREF_SRC, raw_len=None):
    ln = bytes([0x80]) + struct.pack("<H", raw_len) if raw_len is not None else bytes([units])
    return bytes([5, slot, index]) + src + dst + ln + bytes([flags])


def map_req(slot, granter_sel, ref, readonly=False, magic=None, granter=None, short=False, undelivered=False):
    flags = (1 if readonly else 0) | (2 if magic is not None else 0) | (4 if short else 0) | \
        (8 if undelivered else 0)
    gsel = 0xF0 if granter is not None else granter_sel
    out = bytes([6, slot, flags, gsel]) + struct.pack("<H", ref)
    if magic is not None:
        out += struct.pack("<I", magic)
    if granter is not None:
        out += struct.pack("<I", granter)
    return out


def ring(slot, mode, value=0): return bytes([7, slot, mode]) + struct.pack("<I", value)


# dom1 (frontend, 8 RAM pages, 4 pool pages) and dom0 (backend).
FRONT_BACK = connect(0, D1) + connect(1, D0, pool=0, pages=4)

SEEDS = {
    "frontend_backend": FRONT_BACK +
    grant(0, 8, D0, 0) + grant(0, 9, D0, 1, readonly=True) + write(0, 9 * 4096, b"frontend page " * 4) +
    map_req(1, D1, 8) + map_req(1, D1, 9, readonly=True) + map_req(1, D1, 9) +
    segment(1, 0, gref(8, D1, 2), frame(3), flags=GREF_SRC) +
    segment(1, 1, frame(3, 100), gref(8, D1), units=30, flags=GREF_DST) +
    segment(1, 2, gref(9, D1), frame(3), flags=GREF_SRC) +
    hcall(1, COPY, small(3)) + end_access(0, 8) + hcall(1, UNMAP, handle(0)) + hcall(1, UNMAP, handle(0)) +
    end_access(0, 8) + hcall(1, UNMAP, handle(1)) +
    hcall(0, ALLOC_UNBOUND, dom(D0)) + hcall(1, BIND, dom(D1), port(1)) + hcall(1, SEND, port(1)) +
    ring(0, 1) + hcall(0, SEND, port(1)) + hcall(1, PENDING, small(8)) + hcall(1, UNMASK, port(1)) +
    hcall(0, SEND, port(1)) + hcall(0, CLOSE, port(1)) + hcall(1, SEND, port(1)) + die(0) + die(1),
    "zombie": connect(0, D2) + connect(1, D3, pool=0, pages=4) + grant(0, 12, D3, 2) +
    map_req(1, D2, 12) + die(0) + connect(2, D2) + map_req(1, D2, 12) +
    segment(1, 0, gref(12, D2), frame(3)) + hcall(1, COPY, small(1)) + hcall(1, UNMAP, handle(0)) +
    connect(2, D2) + grant(2, 12, D3, 2) + map_req(1, D2, 12) + die(1) + die(2),
    "bad_hellos": connect(0, D1, raw_hello=b"\xa5" * 32, flags=0x13) + connect(0, D1, flags=0x23) +
    connect(0, D1, flags=2) + connect(0, D1, flags=1) + connect(0, D1, frames=0) + connect(0, D1, frames=5) +
    connect(0, D1, frames=4, pages=5) + connect(0, D1, pages=19, memfd_pages=20) +
    connect(0, D1, memfd_pages=4) + connect(0, DSELF) + connect(0, D12345) + connect(0, D1, flags=7) +
    connect(0, D1, flags=0xB) + connect(0, D1, flags=0x43) +
    connect(0, D1, raw_hello=struct.pack("<IIIIQII", MAGIC, VERSION, 70000, 1, 8 * 4096, 1, 0), flags=0x13) +
    connect(0, D1, raw_hello=struct.pack("<IIIIQII", MAGIC, VERSION, 5, 1, 8 * 4096 + 7, 1, 0), flags=0x13) +
    connect(0, D1, raw_hello=struct.pack("<IIIIQII", MAGIC, VERSION, 5, 1, 8 * 4096, 2 ** 32 - 1, 0), flags=0x13) +
    connect(0, D1, pool=11) + connect(1, D2, pool=11) + connect(2, D3, pool=11) + connect(3, D1, pool=1) +
    connect(3, D4, pool=2),
    "hostile_calls": FRONT_BACK + grant(0, 8, D0, 0) + map_req(1, D1, 8) +
    hcall(1, COPY, count(171)) + hcall(1, COPY, huge()) +
    segment(1, 0, frame_of(3, D1), frame(3), flags=0) +
    segment(1, 1, gref(8, D1), frame(3, 4000), units=20) +
    segment(1, 2, gref(8, D1), frame(200), units=1) +
    segment(1, 3, gref(8, D1), frame(3), raw_len=0xFFFF) +
    segment(1, 4, gref(63, D1), gref(8, D1), flags=3) +
    segment(1, 5, gref(8, D1234), frame(3)) +
    segment(1, 6, gref(8, D1), gref(8, DSELF), flags=3) +
    hcall(1, COPY, small(8)) + hcall(1, UNMAP, raw(2 ** 32 + 1)) + hcall(1, UNMAP, small(77)) +
    hcall(0, SETUP, small(2), small(1)) + hcall(1, SETUP, small(0), small(1)) + hcall(0, SETUP, huge(), small(1)) +
    hcall(0, SETUP, small(0), raw(2 ** 32)) + hcall(0, ALLOC_UNBOUND, raw(0x10000)) +
    hcall(0, BIND, dom(D1234), port(1)) + hcall(0, SEND, raw(2 ** 32)) + hcall(0, CLOSE, port(39)) +
    hcall(0, PENDING, huge()) + hcall(0, 0, raw_opcode=2 ** 63) + hcall(0, 10) + hcall(2, SEND, port(1)) +
    die(0) + hcall(1, UNMAP, handle(0)),
    "maps_hostile": connect(0, D1, flags=0x83) + connect(1, D2) + connect(2, D0, pool=0, pages=4) +
    grant(0, 8, D0, 0) + grant(0, 9, D0, 5, absolute=True) + grant(0, 10, D0, 1, readonly=True) +
    grant(1, 8, D0, 0) + grant(1, 9, D0, 3) + grant(1, 11, D0, 1, raw_flags=0x1F) +
    map_req(2, D1, 8) + map_req(2, D1, 9) + map_req(2, D1, 10) + map_req(2, D1, 3000) +
    map_req(2, D2, 8, magic=0) + map_req(2, D2, 8, short=True) + map_req(2, 0, 8, granter=0x10001) +
    map_req(2, D2, 8, undelivered=True) + map_req(2, D2, 11) + map_req(0, D2, 8) +
    b"".join(map_req(2, D2, 8) for _ in range(17)) + map_req(2, D2, 9) + die(1) + die(2) + map_req(3, D1, 8),
    # Regression: GNTTABOP_copy with count 0 memcpy'd from a null vector
    # pointer (UB, found by this fuzzer); now it answers 0 and touches nothing.
    "copy_count_zero": FRONT_BACK + hcall(1, COPY, small(0)) + hcall(0, COPY, zero()),
    # The granter rewrites entries while they are mapped (clearing the pin
    # bits, changing frame and access): maps of a pinned entry keep its
    # frame; the granter only confuses itself.
    "rewrite_pinned": FRONT_BACK + grant(0, 9, D0, 1, readonly=True) + map_req(1, D1, 9, readonly=True) +
    grant(0, 9, D0, 3, readonly=True) + map_req(1, D1, 9, readonly=True) + grant(0, 9, D0, 2) +
    map_req(1, D1, 9) + grant(0, 9, D2, 2) + map_req(1, D1, 9, readonly=True) + hcall(1, UNMAP, handle(0)) +
    hcall(1, UNMAP, handle(1)) + hcall(1, UNMAP, handle(2)) + grant(0, 9, D0, 2) + map_req(1, D1, 9),
    "events_ring": FRONT_BACK + connect(2, D2, pool=0, pages=4) +
    hcall(0, ALLOC_UNBOUND, dom(D0)) + hcall(0, ALLOC_UNBOUND, dom(D2)) + hcall(1, BIND, dom(D1), port(1)) +
    hcall(2, BIND, dom(D1), port(2)) + ring(0, 0, 0xFFFFFFF0) + hcall(1, SEND, port(1)) + hcall(2, SEND, port(1)) +
    ring(0, 1) + hcall(0, UNMASK, port(1)) + hcall(0, UNMASK, port(2)) + hcall(1, SEND, port(1)) +
    hcall(2, SEND, port(1)) + ring(0, 2, 1) + hcall(0, PENDING, small(4)) + die(2) + hcall(0, SEND, port(2)) +
    hcall(0, BIND, dom(D2), port(1)),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "xenemud")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
