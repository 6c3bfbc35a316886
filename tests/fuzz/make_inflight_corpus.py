#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates the in-flight log seeds of fuzz_split_ring and fuzz_packed_ring.

    python3 tests/fuzz/make_inflight_corpus.py   # rewrites corpus/{split,packed}/inflight-*

The input format is documented at the top of inflight_fuzz.cc (ring_fuzzer.cc
hands an input to it when the flags byte has 0x80): a real driver offers
requests, the device completes some out of order, crashes and recovers from
its in-flight log, over and over; some seeds overwrite the log or the ring as
a hostile VMM or driver would.
"""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MODE, COPY, INDIRECT = 0x80, 0x04, 0x01
ADD, POP, COMPLETE, PUBLISH, COLLECT, CRASH, POKE_LOG, POKE_RING = range(8)


def op(code, h=0, *operands):
    return bytes([code | (h << 4)]) + b"".join(operands)


def add(bufs):
    return op(ADD, (bufs - 1) % 3)


def complete(i):
    return op(COMPLETE, 0, bytes([i]))


def crash(base):
    return op(CRASH, 0, struct.pack("<I", base))


def poke_log(off, v):
    return op(POKE_LOG, 0, struct.pack("<HB", off, v))


def poke_ring(off, v):
    return op(POKE_RING, 0, struct.pack("<HB", off, v))


def header(flags, size_sel, log_image=b""):
    return bytes([MODE | flags, size_sel]) + struct.pack("<H", len(log_image)) + log_image


def out_of_order(n_req, bufs):
    """n_req requests popped, every other one completed (from the end), a crash."""
    s = b"".join(add(bufs) for _ in range(n_req)) + op(POP) * n_req
    for i in reversed(range(0, n_req, 2)):
        s += complete(i)
    s += op(PUBLISH) + op(COLLECT)
    return s


def seeds():
    out = {}
    # size_sel: split 1 << (v % 7), packed v % 64 + 1; 3 -> split 8, packed 4; 15 -> split 64 (15%7=1 -> 2)...
    for name, flags, sel in [("mapped", 0, 3), ("copy", COPY, 3), ("indirect", INDIRECT, 4), ("big", 0, 6)]:
        s = header(flags, sel)
        s += out_of_order(4, 2) + crash(0x80008000) + op(POP) * 4 + complete(1) + complete(0) + op(PUBLISH)
        s += op(COLLECT) + add(3) + add(1) + op(POP) + crash(0) + op(POP) * 3 + op(PUBLISH) + op(COLLECT)
        out["inflight-%s-out-of-order-crash" % name] = s
    # A crash between AddUsed and Publish: returned but not visible is in flight.
    s = header(0, 3) + add(2) * 3 + op(POP) * 3 + complete(2) + complete(0) + crash(0x1234) + op(POP) * 3
    s += complete(0) + op(PUBLISH) + op(COLLECT)
    out["inflight-crash-before-publish"] = s
    # Crashes in a row, some before the recovered chains were popped again.
    s = header(0, 4) + add(2) * 5 + op(POP) * 5 + complete(3) + op(PUBLISH)
    s += crash(0) + crash(0xFFFFFFFF) + op(POP) + crash(7) + op(POP) * 2 + complete(0) + op(PUBLISH)
    s += crash(0x80008000) + op(COLLECT)
    out["inflight-crashes-in-a-row"] = s
    # Many laps of the ring with crashes between.
    s = header(COPY, 2)
    for lap in range(12):
        s += add(1 + lap % 3) * 3 + op(POP) * 3 + complete(lap % 3) + op(PUBLISH) + op(COLLECT)
        if lap % 4 == 3:
            s += crash(lap * 0x10001)
        s += op(POP) * 3 + complete(0) + complete(0) + complete(0) + op(PUBLISH) + op(COLLECT)
    out["inflight-laps"] = s
    # Hostile: the log rewritten under the device (header fields, entries).
    for i, (off, v) in enumerate([(8, 7), (10, 0xFF), (16, 0xFF), (20, 2), (33, 1), (34, 0xFF), (38, 0x40),
                                  (32, 5), (12, 0xFF), (14, 0x33)]):
        s = header(0, 3) + out_of_order(4, 2) + poke_log(off, v) + crash(0x80008000) + op(POP) * 4
        s += complete(0) + op(PUBLISH) + op(COLLECT)
        out["inflight-poked-log-%d" % i] = s
    # Hostile: the driver rewrites the ring before the recovery.
    s = header(0, 3) + out_of_order(4, 2) + poke_ring(14, 0xFF) + poke_ring(15, 0xFF) + crash(0) + op(POP) * 4
    out["inflight-poked-ring"] = s
    # Hostile: a random log image from the start.
    rnd = random.Random(7)
    for i in range(4):
        img = bytes(rnd.randrange(256) for _ in range(rnd.randrange(16, 200)))
        s = header(0, 3 + i, img) + add(2) * 2 + op(POP) * 2 + crash(0) + op(POP) * 2 + op(PUBLISH)
        out["inflight-random-log-%d" % i] = s
    return out


def main():
    for kind in ("split", "packed"):
        d = os.path.join(HERE, "corpus", kind)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.startswith("inflight-"):
                os.remove(os.path.join(d, f))
        for name, data in seeds().items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
