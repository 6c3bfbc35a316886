#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Seeds for fuzz_shm (shm_session_fuzzer.cc): 16-byte ops
# {kind u8, a u8, b u16, c u32, d u64}. Writes tests/fuzz/corpus/shm/.
import os
import struct

HELLO, REG, MSG, POKE, KICK, GONE = range(6)
# virtio-mmio registers (vioport/core/mmio.h)
STATUS, DRV_FEAT, DRV_FEAT_SEL, PAGE_SIZE = 0x70, 0x20, 0x24, 0x28
QSEL, QSIZE, QPFN, QREADY, QNOTIFY = 0x30, 0x38, 0x40, 0x44, 0x50
QDESC, QDRIVER, QDEVICE = 0x80, 0x90, 0xA0
SIZES = {"64K": 2, "128K": 4, "256K": 5, "1M": 6, "0": 0, "odd": 3}


def op(kind, a=0, b=0, c=0, d=0):
    return struct.pack("<BBHIQ", kind, a, b, c, d)


def hello(version=2, size="256K", proto_ok=True, unsealed=False, pipe=False, small=False, nfds=1):
    d = (1 if unsealed else 0) | (2 if pipe else 0) | (4 if small else 0) | (nfds << 8)
    return op(HELLO, version, 1 if proto_ok else 2, SIZES[size], d)


def reg(offset, value, width=4, seq=0):
    return op(REG, width, offset, value, seq)


def poke(addr, value):
    # The harness writes at 4096 + c: c is the address less the register page.
    return op(POKE, 0, 0, addr - 4096, value)


def desc(addr, length, flags, nxt):
    # virtq_desc: le64 addr, le32 len, le16 flags, le16 next: two 8-byte pokes.
    return struct.unpack("<Q", struct.pack("<Q", addr))[0], struct.unpack("<Q", struct.pack("<IHH", length, flags, nxt))[0]


def init(features_hi=1, qsize=8, desc_at=0x1000, avail_at=0x1100, used_at=0x1200, seq=1):
    s = [reg(STATUS, 1, seq=seq), reg(STATUS, 3, seq=seq + 1), reg(DRV_FEAT_SEL, 1, seq=seq + 2),
         reg(DRV_FEAT, features_hi, seq=seq + 3), reg(STATUS, 11, seq=seq + 4), reg(QSEL, 0, seq=seq + 5),
         reg(QSIZE, qsize, seq=seq + 6), reg(QDESC, desc_at, seq=seq + 7), reg(QDRIVER, avail_at, seq=seq + 8),
         reg(QDEVICE, used_at, seq=seq + 9), reg(QREADY, 1, seq=seq + 10), reg(STATUS, 15, seq=seq + 11)]
    return b"".join(s)


def request(desc_at=0x1000, avail_at=0x1100, buf=0x2000, out=0x3000, n=16):
    a0, a1 = desc(buf, n, 1, 1)       # readable, NEXT
    b0, b1 = desc(out, n, 2, 0)       # writable
    return b"".join([poke(desc_at, a0), poke(desc_at + 8, a1), poke(desc_at + 16, b0), poke(desc_at + 24, b1),
                     poke(buf, 0x0706050403020100), poke(buf + 8, 0x0F0E0D0C0B0A0908),
                     poke(avail_at, 0x0000000000010000), op(KICK, 0)])


seeds = {
    "good_request": hello() + init() + request(),
    "good_two_guests": hello() + init() + request() + op(GONE) + hello(size="1M") + init() + request(),
    "reset_and_again": hello() + init() + request() + reg(STATUS, 0, seq=20) + init(seq=21) + request(),
    "bad_ring_address": hello() + init(desc_at=0x7FFFF000) + op(KICK, 0),
    "queue_too_big": hello() + reg(STATUS, 1) + reg(STATUS, 3) + reg(QSEL, 0) + reg(QSIZE, 2048) + reg(QREADY, 1),
    "hello_unsealed": hello(unsealed=True) + hello(),
    "hello_pipe": hello(pipe=True) + hello(),
    "hello_small": hello(small=True) + hello(),
    "hello_two_fds": hello(nfds=2) + hello(nfds=0) + hello(),
    "hello_bad_version": hello(version=3) + hello(proto_ok=False) + hello(size="0") + hello(size="odd") + hello(),
    "writes_before_hello": reg(STATUS, 1) + op(MSG, 1, 0, 4) + hello() + op(MSG, 2, 0, 1),
    "second_hello": hello() + hello(),
    "config_and_widths": hello() + reg(0x100, 0x55, 1) + reg(0x102, 0x1234, 2) + reg(0x104, 1, 3) + reg(0xFFC, 7)
    + reg(STATUS, 0x40),
    "legacy_v1": hello(version=1) + reg(STATUS, 1) + reg(STATUS, 3) + reg(PAGE_SIZE, 4096) + reg(QSEL, 0)
    + reg(QSIZE, 8) + reg(QPFN, 1) + reg(STATUS, 7) + op(KICK, 0) + reg(QREADY, 1),
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "shm")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
