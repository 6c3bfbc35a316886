#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Seeds for fuzz_vhost_user (tests/fuzz/vhost_user_fuzzer.cc): QEMU-like
sessions (split and packed rings, blk and the holding echo device, memory
slots, without REPLY_ACK or protocol features, in-flight recovery from a log
the input writes itself), and hostile variants (bad rings, bad headers, bad
memory tables, wrong fds). Writes tests/fuzz/corpus/vhost_user/."""
import os, struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "vhost_user")

# Requests.
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG, SET_CONFIG, GET_INFLIGHT_FD, SET_INFLIGHT_FD, RESET_DEVICE = 24, 25, 31, 32, 34
GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG = 36, 37, 38

# Feature bits.
F_INDIRECT, F_EVENT_IDX, F_PROTOCOL, F_VERSION_1, F_PACKED = 28, 29, 30, 32, 34
P_MQ, P_REPLY_ACK, P_CONFIG, P_INFLIGHT, P_RESET, P_SLOTS = 0, 3, 9, 12, 13, 15
ALL_PROTO = sum(1 << b for b in (P_MQ, P_REPLY_ACK, P_CONFIG, P_INFLIGHT, P_RESET, P_SLOTS))

# Fd selectors (the op byte of a message record).
NONE, EVENTFD, RAM, INFLIGHT = 0, 1, 2, 3
UADDR = 0x7f0000000000  # the "front-end virtual address" of guest RAM offset 0
RAM_SIZE = 1 << 20
QSIZE = 64


def msg(req, payload=b"", fds=NONE, count=1, unsealed=False, flags=1 | 8, size=None):
    op = fds | (((count - 1) & 7) << 2 if fds else 0) | (0x20 if unsealed else 0)
    hdr = struct.pack("<III", req, flags, len(payload) if size is None else size)
    return bytes([op]) + hdr + payload


def u64(v): return struct.pack("<Q", v)
def state(i, n): return struct.pack("<II", i, n)
def kick(q): return bytes([0xC0 | q])


def poke(off, data):
    out = b""
    assert off % 16 == 0
    for i in range(0, len(data), 240):
        chunk = data[i:i + 240]
        out += bytes([0x80]) + struct.pack("<HB", (off + i) // 16, len(chunk)) + chunk
    return out


def region(gpa, size, uaddr, off): return struct.pack("<QQQQ", gpa, size, uaddr, off)
def mem_table(*regions): return struct.pack("<II", len(regions), 0) + b"".join(regions)
def desc(addr, length, flags, nxt=0): return struct.pack("<QIHH", addr, length, flags, nxt)
def packed_desc(addr, length, bid, flags): return struct.pack("<QIHH", addr, length, bid, flags)


def ring_base(q): return 0x1000 + q * 0x6000  # desc, avail +0x2000, used +0x4000


def vring(q, base=0, packed=False):
    d = ring_base(q)
    addr = struct.pack("<IIQQQQ", q, 0, UADDR + d, UADDR + d + 0x4000, UADDR + d + 0x2000, 0)
    return (msg(SET_VRING_NUM, state(q, QSIZE)) + msg(SET_VRING_BASE, state(q, base)) +
            msg(SET_VRING_ADDR, addr) + msg(SET_VRING_KICK, u64(q), EVENTFD) +
            msg(SET_VRING_CALL, u64(q), EVENTFD) + msg(SET_VRING_ERR, u64(q), EVENTFD) +
            msg(SET_VRING_ENABLE, state(q, 1)))


def connect(proto=ALL_PROTO):
    return (msg(GET_FEATURES, flags=1) + msg(GET_PROTOCOL_FEATURES, flags=1) +
            msg(SET_PROTOCOL_FEATURES, u64(proto), flags=1) + msg(GET_QUEUE_NUM, flags=1) +
            msg(SET_OWNER) + msg(GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60), flags=1))


def features(packed=False, proto=True):
    f = (1 << F_VERSION_1) | (1 << F_INDIRECT) | (1 << F_EVENT_IDX)
    if proto: f |= 1 << F_PROTOCOL
    if packed: f |= 1 << F_PACKED
    return msg(SET_FEATURES, u64(f))


def memory(): return msg(SET_MEM_TABLE, mem_table(region(0, RAM_SIZE, UADDR, 0)), RAM)


def inflight_area(size, off, queues, qsize): return struct.pack("<QQHH4x", size, off, queues, qsize)


def inflight():
    # 2 queues of 64: 2 x 1088 bytes (16-byte header + 64 entries, rounded to 64).
    return (msg(GET_INFLIGHT_FD, inflight_area(0, 0, 2, QSIZE), flags=1) +
            msg(SET_INFLIGHT_FD, inflight_area(2 * 1088, 0, 2, QSIZE), INFLIGHT))


def blk_request(q, head, typ, sector, data_len, buf):
    """A 3-descriptor blk request at descriptors head..head+2 of ring q, buffers at `buf`."""
    d = ring_base(q)
    write = 2 if typ == 0 else 0
    descs = (desc(buf, 16, 1, head + 1) + desc(buf + 0x100, data_len, 1 | write, head + 2) +
             desc(buf + 0x100 + data_len, 1, 2))
    return (poke(d + 16 * head, descs) + poke(buf, struct.pack("<IIQ", typ, 0, sector)) +
            poke(buf + 0x100, bytes((i * 7) & 0xff for i in range(data_len)) if typ == 1 else b""))


def avail(q, heads):
    ring = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    ring += bytes(-len(ring) % 16)
    return poke(ring_base(q) + 0x2000, ring)


def qemu_split(device=0):
    s = connect() + features() + memory() + inflight() + vring(0) + vring(1)
    s += blk_request(0, 0, 1, 2, 512, 0x40000) + blk_request(0, 3, 0, 2, 512, 0x41000) + avail(0, [0, 3])
    s += blk_request(1, 0, 0, 2, 512, 0x43000) + avail(1, [0])
    s += kick(0) + kick(1)
    s += msg(GET_VRING_BASE, state(0, 0), flags=1) + msg(GET_VRING_BASE, state(1, 0), flags=1)
    return bytes([device]) + s


def echo_recovery():
    # The echo device holds what it pops; stopping the ring drops them, the
    # in-flight log keeps them, and the restarted ring resubmits them.
    s = connect() + features() + memory() + inflight() + vring(0)
    d = ring_base(0)
    s += poke(d, desc(0x40000, 64, 1, 1) + desc(0x41000, 64, 2) + desc(0x42000, 32, 1, 3) + desc(0x43000, 32, 2))
    s += avail(0, [0, 2]) + kick(0)
    s += msg(GET_VRING_BASE, state(0, 0), flags=1)
    s += msg(SET_VRING_BASE, state(0, 0)) + msg(SET_VRING_KICK, u64(0), EVENTFD) + kick(0)
    return bytes([1]) + s


def packed():
    s = connect() + features(packed=True) + memory() + vring(0, base=0x80008000) + vring(1, base=0x80008000)
    d = ring_base(0)
    avail_f = 1 << 7
    s += poke(0x40000, struct.pack("<IIQ", 1, 0, 4)) + poke(0x40100, bytes(range(256)) * 2)
    s += poke(d, packed_desc(0x40000, 16, 0, avail_f | 1) + packed_desc(0x40100, 512, 0, avail_f | 1) +
              packed_desc(0x40300, 1, 0, avail_f | 2))
    s += kick(0) + kick(1) + msg(GET_VRING_BASE, state(0, 0), flags=1)
    return bytes([0]) + s


def mem_slots():
    s = connect() + features() + msg(GET_MAX_MEM_SLOTS, flags=1)
    half = RAM_SIZE // 2
    s += msg(ADD_MEM_REG, u64(0) + region(0, half, UADDR, 0), RAM)
    s += msg(ADD_MEM_REG, u64(0) + region(0x100000000, half, UADDR + half, half), RAM)
    s += vring(0) + blk_request(0, 0, 1, 2, 512, 0x40000) + avail(0, [0]) + kick(0)
    s += msg(REM_MEM_REG, u64(0) + region(0x100000000, half, UADDR + half, half), RAM)
    return bytes([0]) + s


def legacy_frontend():
    # No REPLY_ACK, and then no protocol features at all: SET_FEATURES enables the rings.
    s = connect(proto=(1 << P_MQ)) + features(proto=False) + memory() + vring(0)[:-21]
    s += blk_request(0, 0, 0, 0, 512, 0x40000) + avail(0, [0]) + kick(0)
    return bytes([0]) + s


def inflight_in_ram():
    # The in-flight area is guest RAM itself (the fuzzer writes the log): a
    # log saying heads 1 and 5 are in flight, resubmitted at ring start.
    s = connect() + features() + memory()
    s += msg(SET_INFLIGHT_FD, inflight_area(4096, 0x80000, 1, QSIZE), RAM)
    log = struct.pack("<QHHHH", 0, 1, QSIZE, 0, 0)
    entries = bytearray(16 * QSIZE)
    for h, c in ((5, 1), (1, 2)):
        entries[16 * h] = 1
        entries[16 * h + 8:16 * h + 16] = struct.pack("<Q", c)
    s += poke(0x80000, log + bytes(entries))
    d = ring_base(0)
    s += poke(d + 16, desc(0x40000, 64, 2)) + poke(d + 80, desc(0x41000, 64, 2))
    s += avail(0, [5, 1])  # the driver made them available; the log says they were popped
    s += vring(0) + kick(0) + msg(GET_VRING_BASE, state(0, 0), flags=1)
    return bytes([1]) + s


def hostile_ring(kind):
    s = connect() + features() + memory() + inflight() + vring(0)
    d = ring_base(0)
    if kind == "oob":
        s += poke(d, desc(0x40000, 16, 1, 1) + desc(0x7fff0000, 512, 3, 2) + desc(0x40300, 1, 2))
        s += avail(0, [0])
    elif kind == "loop":
        s += poke(d, desc(0x40000, 16, 1, 1) + desc(0x40100, 512, 1, 0))
        s += avail(0, [0])
    elif kind == "indirect":
        s += poke(d, desc(0x50000, 48, 4))
        s += poke(0x50000, desc(0x40000, 16, 1, 1) + desc(0x50000, 48, 4 | 1, 2) + desc(0x40300, 1, 2))
        s += avail(0, [0])
    elif kind == "jump":
        s += poke(ring_base(0) + 0x2000, struct.pack("<HH", 0, 300))
    s += kick(0) + msg(GET_VRING_BASE, state(0, 0), flags=1)
    s += msg(SET_VRING_BASE, state(0, 0)) + msg(SET_VRING_KICK, u64(0), EVENTFD)
    s += msg(RESET_DEVICE) + features() + vring(0) + kick(0)
    return bytes([0]) + s


def regress_misaligned_region():
    # Found by the fuzzer: a region whose fd offset (1) disagrees with its
    # guest address in alignment put the rings at odd host addresses
    # (misaligned 16-bit atomics). The session now refuses the region.
    s = connect() + features() + msg(GET_MAX_MEM_SLOTS, flags=1)
    s += msg(ADD_MEM_REG, u64(0) + region(0x0a00000000000000, 0x80000, UADDR, 1), RAM)
    s += msg(ADD_MEM_REG, u64(0) + region(0, 0x80000, UADDR + 0x80000, 0x80000), RAM)
    s += vring(0) + kick(0)
    return bytes([0]) + s


def regress_stale_inflight():
    # A good chain is popped (and held) when the next one breaks the ring;
    # the front-end stops the ring, the driver resets it (zeroed) and it is
    # restarted: the held chain's log entry must not be resubmitted.
    s = connect() + features() + memory() + inflight() + vring(0)
    d = ring_base(0)
    s += poke(d, desc(0x40000, 64, 1, 1) + desc(0x41000, 64, 2) + desc(0x7fff0000, 64, 2))
    s += avail(0, [0, 2]) + kick(0)
    s += msg(GET_VRING_BASE, state(0, 0), flags=1)
    s += poke(d, bytes(48)) + poke(d + 0x2000, bytes(16))  # the driver's reset ring
    s += msg(SET_VRING_BASE, state(0, 0)) + msg(SET_VRING_KICK, u64(0), EVENTFD) + kick(0)
    return bytes([1]) + s


seeds = {
    "regress_region_misaligned_in_mapping": regress_misaligned_region(),
    "regress_stale_inflight_after_ring_error": regress_stale_inflight(),
    "qemu_split_blk": qemu_split(0),
    "qemu_split_echo": qemu_split(1),
    "echo_inflight_recovery": echo_recovery(),
    "packed_blk": packed(),
    "mem_slots": mem_slots(),
    "legacy_frontend": legacy_frontend(),
    "inflight_log_in_ram": inflight_in_ram(),
    "ring_desc_outside_memory": hostile_ring("oob"),
    "ring_chain_loop": hostile_ring("loop"),
    "ring_nested_indirect": hostile_ring("indirect"),
    "ring_avail_jump": hostile_ring("jump"),
    "bad_header_version": b"\x00" + connect() + msg(GET_FEATURES, flags=0),
    "payload_too_large": b"\x00" + connect() + msg(SET_MEM_TABLE, size=5000),
    "mem_table_overlap": b"\x00" + connect() + msg(
        SET_MEM_TABLE, mem_table(region(0, 0x80000, UADDR, 0), region(0x80000, 0x80000, UADDR + 0x40000, 0x80000)),
        RAM, count=2),
    "mem_table_unsealed": b"\x00" + connect() + msg(SET_MEM_TABLE, mem_table(region(0, 4096, UADDR, 0)), RAM,
                                                    unsealed=True),
    "kick_two_fds": b"\x00" + connect() + features() + memory() + msg(SET_VRING_KICK, u64(0), EVENTFD, count=2),
    "config_and_reset": b"\x00" + connect() + msg(SET_CONFIG, struct.pack("<III", 32, 1, 0) + b"\x01") +
    msg(GET_CONFIG, struct.pack("<III", 56, 8, 0) + bytes(8), flags=1) + msg(RESET_OWNER) + msg(RESET_DEVICE),
}

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {OUT}")
