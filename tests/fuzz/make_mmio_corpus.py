#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Seeds for fuzz_mmio (tests/fuzz/mmio_fuzzer.cc): valid virtio-mmio bring-ups
(version 2 split and packed, legacy version 1) with a request in a ring and a
doorbell, plus a few hostile variants. Writes tests/fuzz/corpus/mmio/."""
import os, struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "mmio")
BASE = 0x1000  # guest address of region offset 0

def reg(off, val, size=4): return struct.pack("<BBHI", 0, size, off, val & 0xffffffff)
def notify(q): return struct.pack("<BBHI", 1, 0, 0, q)
def poke(addr, val): return struct.pack("<BBHI", 2, 0, ((addr - BASE) // 4) & 0xffff, val & 0xffffffff)
def reads(): return struct.pack("<BBHI", 3, 0, 0, 0)

def poke_bytes(addr, b):
    b = b + b"\0" * (-len(b) % 4)
    return b"".join(poke(addr + i, struct.unpack_from("<I", b, i)[0]) for i in range(0, len(b), 4))

def desc(addr, length, flags, nxt): return struct.pack("<QIHH", addr, length, flags, nxt)

def v2(packed=False, hostile=None):
    ops = [reg(0x70, 0), reg(0x70, 1), reg(0x70, 3), reg(0x24, 0), reg(0x20, 0), reg(0x24, 1),
           reg(0x20, 1 | (4 if packed else 0)), reg(0x70, 11), reads()]
    for q, base in ((0, 0x1000), (1, 0x4000)):
        ops += [reg(0x30, q), reg(0x38, 8), reg(0x80, base), reg(0x84, 0), reg(0x90, base + 0x200),
                reg(0x94, 0), reg(0xa0, base + 0x400), reg(0xa4, 0), reg(0x44, 1)]
    ops += [reg(0x70, 15), reads()]
    if packed:
        avail = (1 << 7)
        ops.append(poke_bytes(0x1000, desc(0x8000, 16, avail | 1, 0) + desc(0x9000, 16, avail | 2, 0)))
    else:
        nxt = 1 if hostile != "loop" else 0
        ops.append(poke_bytes(0x1000, desc(0x8000, 16, 1, nxt) + desc(0x9000 if hostile != "oob" else 0x800000, 16, 2, 0)))
        ops.append(poke_bytes(0x1200, struct.pack("<HHH", 0, 1 if hostile != "jump" else 300, 0)))
    ops.append(poke_bytes(0x8000, bytes(range(16))))
    ops += [notify(0), reads(), reg(0x64, 1), reg(0x70, 0), reads()]
    return b"\x00" + b"".join(ops)

def v1():
    ops = [reg(0x70, 1), reg(0x70, 3), reg(0x20, 0), reg(0x28, 4096), reg(0x30, 0), reg(0x38, 8),
           reg(0x3c, 4096), reg(0x40, 0x2000 // 4096), reg(0x70, 7), reads()]
    ops.append(poke_bytes(0x2000, desc(0x8000, 16, 1, 1) + desc(0x9000, 16, 2, 0)))
    ops.append(poke_bytes(0x2000 + 16 * 8, struct.pack("<HHH", 0, 1, 0)))
    ops += [notify(0), reads(), reg(0x40, 0), reg(0x70, 0)]
    return b"\x01" + b"".join(ops)

os.makedirs(OUT, exist_ok=True)
seeds = {"v2_split": v2(), "v2_packed": v2(packed=True), "v2_loop": v2(hostile="loop"),
         "v2_oob": v2(hostile="oob"), "v2_jump": v2(hostile="jump"), "v1_legacy": v1(),
         "bad_widths": b"\x00" + reg(0x70, 1, 2) + reg(0x101, 7, 3) + reg(0x1fc, 1, 4) + reg(0x30, 0xffff) + reg(0x44, 1)}
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {OUT}")
