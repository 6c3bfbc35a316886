#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Seeds for fuzz_crq (tests/fuzz/crq_fuzzer.cc): a client partition's entry
stream to a CrqServer serving an RngDevice. A good handshake (INIT, VERSION,
DEVICE_INFO, features, status, split-ring set-up in mapped client memory, a
NOTIFY that the device serves), and variants: no window mapped, bad version,
stale generations, out-of-window ring, bad opcodes and fields, reconnects,
flow control (a small advertised queue, CREDITs good and bogus).
Writes tests/fuzz/corpus/crq/."""
import os, struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "crq")

VALID_CMD, VALID_INIT, VALID_EVENT = 0x80, 0xC0, 0xFF
INIT, INIT_COMPLETE = 0x01, 0x02
(VERSION, DEVICE_INFO, GET_FEATURES, SET_FEATURES, GET_STATUS, SET_STATUS, READ_CONFIG, WRITE_CONFIG,
 QUEUE_INFO, SET_QUEUE) = range(1, 11)
NOTIFY, USED, CONFIG_CHANGED, PING, CREDIT = 0x10, 0x11, 0x12, 0x13, 0x14
Q_SIZE, Q_DESC, Q_DRIVER, Q_DEVICE, Q_ENABLE = range(5)
ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
VERSION_1 = 1 << 32
DESC, AVAIL, USED_RING, BUF = 0x1000, 0x2000, 0x3000, 0x4000


def entry(valid, op, status=0, gen=0, a=0, b=0, value=0):
    return struct.pack(">BBBBHHQ", valid, op, status, gen, a, b, value)


def cmd(op, gen=1, a=0, b=0, value=0): return entry(VALID_CMD, op, 0, gen, a, b, value)
def init(kind=INIT): return entry(VALID_INIT, kind)
def version(gen=1, major=1, entries=256, xfer=4096, queues=4):
    return cmd(VERSION, gen, major << 8, 0, entries << 48 | xfer << 16 | queues)


def poke(off, data8):  # harness record: 8 bytes into client memory
    assert len(data8) == 8
    return struct.pack(">BBI", 0x01, 0, off) + b"\0\0" + data8


def put_tce(ioba, tce):  # harness record: H_PUT_TCE on the client window
    return struct.pack(">BBBBHHQ", 0x02, 0, 0, 0, ioba // 4096, 0, tce)


def handshake(gen=1):
    return init() + version(gen) + cmd(DEVICE_INFO, gen) + cmd(GET_FEATURES, gen) + \
        cmd(SET_FEATURES, gen, 0, 0, VERSION_1) + cmd(SET_FEATURES, gen, 1, 0, 0) + \
        cmd(SET_STATUS, gen, value=ACK) + cmd(SET_STATUS, gen, value=ACK | DRIVER) + \
        cmd(SET_STATUS, gen, value=ACK | DRIVER | FEATURES_OK) + cmd(GET_STATUS, gen)


def queue(gen=1, size=8, desc=DESC, drv=AVAIL, dev=USED_RING):
    return cmd(QUEUE_INFO, gen, 0) + cmd(SET_QUEUE, gen, 0, Q_SIZE, size) + \
        cmd(SET_QUEUE, gen, 0, Q_DESC, desc) + cmd(SET_QUEUE, gen, 0, Q_DRIVER, drv) + \
        cmd(SET_QUEUE, gen, 0, Q_DEVICE, dev) + cmd(SET_QUEUE, gen, 0, Q_ENABLE, 1)


def ring(n=1, length=64, flags=2):
    out = b""
    for i in range(n):
        out += poke(DESC + 16 * i, struct.pack("<Q", BUF + 0x100 * i))
        out += poke(DESC + 16 * i + 8, struct.pack("<IHH", length, flags, 0))
    avail = [0, n] + list(range(n))
    avail += [0] * (-len(avail) % 4)
    for j in range(0, len(avail), 4):
        out += poke(AVAIL + 2 * j, struct.pack("<4H", *avail[j:j + 4]))
    return out


def good(gen=1):
    return handshake(gen) + queue(gen) + cmd(SET_STATUS, gen, value=ACK | DRIVER | FEATURES_OK | DRIVER_OK) + \
        ring(2) + cmd(NOTIFY, gen, 0) + cmd(PING, gen) + cmd(GET_STATUS, gen)


def upgrade(xor=0, pos=0):  # harness record: a live upgrade (the record changed at pos by xor)
    return struct.pack(">BBBBIQ", 0x03, xor, 0, 0, pos, 0)


def after_upgrade(gen=1):  # the driver carries on: two more chains, a ping
    return ring(4) + cmd(NOTIFY, gen, 0) + cmd(PING, gen) + cmd(GET_STATUS, gen)


SEEDS = {
    "upgrade_connected": b"\x01" + good() + upgrade() + after_upgrade() + upgrade() + after_upgrade(),
    "upgrade_mid_handshake": b"\x01" + handshake() + upgrade() + queue() +
                             cmd(SET_STATUS, 1, value=ACK | DRIVER | FEATURES_OK | DRIVER_OK) + after_upgrade(),
    "upgrade_waiting_init": b"\x01" + upgrade() + good(),
    "upgrade_changed_cursor": b"\x01" + good() + upgrade(0x40, 5 * 8) + after_upgrade(),
    "upgrade_changed_snapshot": b"\x01" + good() + upgrade(0xff, 200) + after_upgrade(),
    "good_handshake": b"\x01" + good(),
    "unmapped_window": b"\x00" + good(),  # the ring copies fail: H_COPY_RDMA errors
    "tce_by_hand": b"\x00" + b"".join(put_tce(a, a | 3) for a in (DESC, AVAIL, USED_RING, BUF)) + good(),
    "reconnect": b"\x01" + good(1) + init() + good(2) + cmd(SET_STATUS, 2, value=0) + version(3),
    "bad_version": b"\x01" + init() + version(1, major=7) + init() + version(0) + init() +
                   version(1, entries=1) + init(INIT_COMPLETE) + version(5) + cmd(GET_STATUS, 4),
    "stale_and_config": b"\x01" + handshake(3) + cmd(GET_STATUS, 9) + cmd(NOTIFY, 2, 0) +
                        cmd(READ_CONFIG, 3, 0, 4) + cmd(WRITE_CONFIG, 3, 0, 2, 0x1234 << 48) +
                        cmd(READ_CONFIG, 3, 0, 9) + cmd(PING | 0x80, 3) + cmd(PING, 3),
    "bad_ring": b"\x01" + handshake() + queue(size=0x8000, desc=0xFFFF0, drv=0xFFFFE, dev=0xFFFF8) +
                cmd(SET_STATUS, value=ACK | DRIVER | FEATURES_OK | DRIVER_OK) + ring(1, 0xFFFFFFFF, 3) +
                cmd(NOTIFY, 1, 0) + cmd(NOTIFY, 1, 7) + cmd(SET_QUEUE, 1, 0, Q_DESC, 1 << 40),
    "hostile_misc": b"\x01" + cmd(GET_STATUS) + init() + cmd(DEVICE_INFO) + init(0x07) + init() + version() +
                    cmd(SET_QUEUE, 1, 3, Q_SIZE, 8) + cmd(SET_QUEUE, 1, 0, 9, 0) + init() + version() +
                    cmd(SET_STATUS, 1, value=0x100) + init() + version() + entry(VALID_EVENT, 0x02) +
                    entry(0x40, 1) + init() + version() + cmd(0x55, 1, 0xFFFF, 0xFFFF, 2**64 - 1),
    # 8 entries advertised: the server may have 4 answers outstanding; pings
    # beyond that wait for CREDIT (and overlap: status 2), then a bogus CREDIT.
    "flow_control": b"\x01" + init() + version(1, entries=8) + cmd(PING) * 6 + cmd(CREDIT, 1, 4) +
                    cmd(PING) + cmd(CREDIT, 1, 7) + good(1) + cmd(CREDIT, 1, 0xFFFF),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(SEEDS)} seeds to {OUT}")
