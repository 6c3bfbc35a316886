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


# vios's own records around the endpoint's part (byte 0 == 4): byte 1 even,
# a HELLO (one descriptor, index 0); odd, a DEVICE head, stats and the
# attachment's head (byte 3: queue count - 1).
def hello(version=2, devices=3, fd=0, magic=0x3165646172677076, kind=1):
    return u64(kind) + u64(magic) + u64(version) + u64(4242) + u64(devices) + u64(fd)


def device_head(dev_id=b"d0", dev_type=b"blk", opts=((b"path", b"/srv/d0.img"),), kind=2):
    return u64(kind) + s(dev_id) + s(dev_type) + options(list(opts))


def attach_head(transport=b"shm", opts=((b"path", b"/run/d0.sock"),), frozen=123456789):
    if transport is None:
        return u64(0)
    return u64(1) + s(transport) + options(list(opts)) + u64(frozen)


def heads(nq, record, device=True):
    return bytes([4, 1 if device else 0, 0, nq - 1]) + record


def host_state(data=b"", fds=0):  # a DEVICE record's end (version 3)
    return s(data) + u64(fds)


# A console's host state (byte 0 == 5; byte 1: bit 0 a client descriptor,
# bit 1 the listener not listening, bit 2 given back after).
def console_state(cols=80, rows=25, client=1, in_open=1, out_open=1, to_guest=b"", to_host=b"", version=1):
    return (u64(version) + u64(cols) + u64(rows) + u64(client) + u64(in_open) + u64(out_open) +
            s(to_guest) + s(to_host))


def console(record, flags=1):
    return bytes([5, flags, 0, 0]) + record


# An shm session (byte 0 == 3): mmio version 2, a 1 MiB region (the RAM
# memfd, index 0), the config eventfd (1), two queues' kick (2, 3) and call
# (4, 5) eventfds, the mirror's state, the controller. Guest memory starts
# after the register page, so the rings and buffers sit 0x1000 further on.
def shm_session(status=DRIVER_OK_STATUS, version=2, size=1 << 20, nq=2, mirror_gen=0, regs_version=2):
    q0 = [0x1000, 0x1400, 0x2000, 4096, 0]
    q1 = [0, 0, 0, 4096, 0]
    mirror = [mirror_gen, 0, 5, 0, regs_version, 0, 0, VERSION_1, 4096, 0, 2] + q0 + q1
    ring = [64, 0x1000, 0x1400, 0x2000, 1, 0]
    return (u64(version) + u64(size) + u64(0) + u64(1) + u64(nq) + u64(2) + u64(3) + u64(4) + u64(5) +
            u64s(mirror) + snapshot(status, VERSION_1, [ring, OFF]))


def shm_ram():
    r = bytearray(0x1000) + bytearray(0x3300)
    descs = [(0x3000, 16, 1, 1), (0x4000, 512, 1 | 2, 2), (0x4200, 1, 2, 0)]
    for i, (addr, ln, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", r, 0x1000 + i * 16, addr, ln, flags, nxt)
    struct.pack_into("<HHH", r, 0x1400, 0, 1, 0)
    struct.pack_into("<IIQ", r, 0x3000, 0, 0, 0)
    return bytes(r)


BLK = options([(b"path", b"/srv/d0.img"), (b"num-queues", b"2")])
seeds.update({
    "upgrade_stats": upgrade(2, BLK + stats([(10, 4096, 8192), (3, 512, 0)])),
    "upgrade_no_stats": upgrade(1, BLK + u64(0)),
    "upgrade_queue_mismatch": upgrade(1, BLK + stats([(1, 2, 3), (4, 5, 6)])),
    "upgrade_bad_delay": upgrade(1, BLK + stats([(1, 2, 3)], tail=(20, 7, 70000, 5, 2000000, 60000, 9, 4))),
    "upgrade_truncated": upgrade(2, (BLK + stats([(10, 4096, 8192), (3, 512, 0)]))[:-30]),
    "upgrade_many_options": upgrade(1, options([(b"k%d" % i, b"v") for i in range(300)])),
    "hello": heads(1, hello(), device=False),
    "hello_version_1": heads(1, hello(version=1), device=False),
    "hello_version_9": heads(1, hello(version=9), device=False),
    "hello_no_fd": heads(1, hello(fd=3), device=False),
    "hello_trailing": heads(1, hello() + u64(7), device=False),
    "device_attached": heads(2, device_head() + stats([(10, 4096, 8192), (3, 512, 0)]) + attach_head() +
                             host_state()),
    "device_detached": heads(1, device_head() + u64(0) + attach_head(None) + host_state()),
    "device_console_state": heads(1, device_head(dev_type=b"console", opts=((b"socket", b"/run/c.sock"),)) + u64(0) +
                                  attach_head(None) + host_state(console_state(to_host=b"late output"), 0)),
    "device_host_fds_missing": heads(1, device_head() + u64(0) + attach_head(None) + host_state(b"x", 2)),
    "console_client": console(console_state(to_guest=b"typed before", to_host=b"printed before")),
    "console_no_client": console(console_state(client=0, in_open=0, out_open=0), flags=0),
    "console_half_closed": console(console_state(in_open=0), flags=1 | 4),
    "console_fd_missing": console(console_state(), flags=0),
    "console_not_listening": console(console_state(client=0), flags=2),
    "console_bad_version": console(console_state(version=2)),
    "console_huge_pending": console(console_state()[:-16] + u64(1 << 40)),
    "console_trailing": console(console_state() + b"\0"),
    "device_abort": heads(1, u64(4) + s(b"the device would not freeze")),
    "device_wrong_kind": heads(1, device_head(kind=3) + u64(0) + attach_head(None)),
    "device_bad_attached": heads(1, device_head() + u64(0) + u64(2)),
    "shm_running": seed(3, shm_session(), shm_ram()),
    "shm_not_started": seed(3, shm_session(status=0x03)),
    "shm_odd_generation": seed(3, shm_session(mirror_gen=1), shm_ram()),
    "shm_wrong_queue_count": seed(3, shm_session(nq=3), shm_ram()),
    "shm_small_region": seed(3, shm_session(size=4096), shm_ram()),
    "shm_region_too_big": seed(3, shm_session(size=2 << 20), shm_ram()),
})
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "handover")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
