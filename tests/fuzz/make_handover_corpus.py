#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Seeds for fuzz_handover (handover_fuzzer.cc): live-upgrade records as the
# old vios writes them (HandoverWriter: little-endian u64s, strings and u64
# lists with a u64 count, descriptors as their u64 index), each followed by
# guest RAM holding a split ring with one blk read request.
# Writes tests/fuzz/corpus/handover/.
import os
import struct


def u64(v):
    return struct.pack("<Q", v)


def s(b):
    return u64(len(b)) + b


def u64s(vals):
    return u64(len(vals)) + b"".join(u64(v) for v in vals)


VERSION_1 = 1 << 32
DRIVER_OK_STATUS = 0x0F  # ACK | DRIVER | FEATURES_OK | DRIVER_OK


def ram():
    # desc table at 0 (64 entries), avail at 0x400, used at 0x1000; a read of
    # sector 0: header at 0x2000, 512 data bytes at 0x3000, status at 0x3200.
    r = bytearray(0x3300)
    descs = [(0x2000, 16, 1, 1), (0x3000, 512, 1 | 2, 2), (0x3200, 1, 2, 0)]
    for i, (addr, ln, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", r, i * 16, addr, ln, flags, nxt)
    struct.pack_into("<HHH", r, 0x400, 0, 1, 0)  # flags, idx 1, ring[0] = 0
    struct.pack_into("<IIQ", r, 0x2000, 0, 0, 0)  # VIRTIO_BLK_T_IN, sector 0
    return bytes(r)


def snapshot(status, features, queues, error=b""):
    out = u64(status) + u64(features) + u64(0) + u64(len(queues))
    for q in queues:
        out += u64s(q)
    return out + s(error)


def seed(kind, record, tail=b""):
    return bytes([kind]) + struct.pack("<H", len(record)) + record + tail


RING0 = [64, 0x0, 0x400, 0x1000, 1, 0]
OFF = [0, 0, 0, 0, 0, 0]

UA = 0x7F0000000000


def msg(req, payload=b"", fds=()):
    return u64(req) + s(payload) + u64(len(fds)) + b"".join(u64(i) for i in fds)


def vhost_user(extra=b"", base=0):
    region = struct.pack("<IIQQQQ", 1, 0, 0, 1 << 20, UA, 0)
    msgs = [
        msg(3),                              # SET_OWNER
        msg(16, u64(0)),                     # SET_PROTOCOL_FEATURES
        msg(2, u64(VERSION_1)),              # SET_FEATURES
        msg(5, region, [0]),                 # SET_MEM_TABLE, the RAM memfd
        msg(8, struct.pack("<II", 0, 64)),   # SET_VRING_NUM
        msg(9, struct.pack("<IIQQQQ", 0, 0, UA, UA + 0x1000, UA + 0x400, 0)),  # SET_VRING_ADDR
        msg(10, struct.pack("<II", 0, base)),  # SET_VRING_BASE
        msg(13, u64(0), [1]),                # SET_VRING_CALL
        msg(12, u64(0), [2]),                # SET_VRING_KICK
    ]
    return u64(len(msgs)) + b"".join(msgs) + u64(0) + s(extra)


seeds = {
    "controller_running": seed(0, snapshot(DRIVER_OK_STATUS, VERSION_1, [RING0, OFF]), ram()),
    "controller_base_ahead": seed(0, snapshot(DRIVER_OK_STATUS, VERSION_1, [RING0[:5] + [1], OFF]), ram()),
    "controller_needs_reset": seed(0, snapshot(DRIVER_OK_STATUS | 0x40, VERSION_1, [RING0, OFF], b"queue 0: bad"), ram()),
    "controller_not_started": seed(0, snapshot(0x03, 0, [OFF, OFF])),
    "controller_bad_queue": seed(0, snapshot(DRIVER_OK_STATUS, VERSION_1, [[64, 0xFFFFFFFFFFFF0000, 0x400, 0x1000, 1, 0], OFF]), ram()),
    "controller_truncated": seed(0, snapshot(DRIVER_OK_STATUS, VERSION_1, [RING0, OFF])[:40]),
    "vhost_user_running": seed(1, vhost_user(), ram()),
    "vhost_user_base_ahead": seed(1, vhost_user(base=1), ram()),
    "vhost_user_missing_fd": seed(1, vhost_user()[:-40] + msg(12, u64(0), [7]) + u64(0) + s(b""), ram()),
}


# vios's own DEVICE record pieces (byte 0 == 2; byte 3: queue count - 1):
# options, then the device's stats (upgrade_records.h).
def options(kv):
    return u64(len(kv)) + b"".join(s(k) + s(v) for k, v in kv)


def stats(queues, latency=None, tail=(20, 7, 70000, 5, 100, 60000, 9, 4)):
    out = u64(1) + u64(len(queues))
    for q in queues:
        out += b"".join(u64(v) for v in q)
    lat = latency or [3] * 17
    out += b"".join(u64(v) for v in lat) + u64(123456)
    return out + b"".join(u64(v) for v in tail)


def upgrade(nq, record):
    return bytes([2, 0, 0, nq - 1]) + record


BLK = options([(b"path", b"/srv/d0.img"), (b"num-queues", b"2")])
seeds.update({
    "upgrade_stats": upgrade(2, BLK + stats([(10, 4096, 8192), (3, 512, 0)])),
    "upgrade_no_stats": upgrade(1, BLK + u64(0)),
    "upgrade_queue_mismatch": upgrade(1, BLK + stats([(1, 2, 3), (4, 5, 6)])),
    "upgrade_bad_delay": upgrade(1, BLK + stats([(1, 2, 3)], tail=(20, 7, 70000, 5, 2000000, 60000, 9, 4))),
    "upgrade_truncated": upgrade(2, (BLK + stats([(10, 4096, 8192), (3, 512, 0)]))[:-30]),
    "upgrade_many_options": upgrade(1, options([(b"k%d" % i, b"v") for i in range(300)])),
})
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "handover")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
