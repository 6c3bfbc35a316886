#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Seeds for fuzz_xen_control (tests/fuzz/xen_control_fuzzer.cc): a frontend
that connects, brings queues up through the register mailbox and has
requests echoed, then reconnects (grants=map, grants=copy, two queues, a
held request with a four-page map cache, and no cache at all, where the
rings cannot be mapped and the device needs a reset; a device reset after
the cache filled, with rings on new grants); refusals of every kind
of bad key; state sequences; a hostile mailbox; a frontend tearing down
grants and ports under a connection. Writes tests/fuzz/corpus/xen_control/."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "xen_control")

KEYS = ["state", "protocol-version", "ctrl-ref", "ctrl-evtchn", "num-queues",
        "queue-0/evtchn", "queue-1/evtchn", "queue-2/evtchn"]
NUM, SMALL, GOOD, HUGE, REMOVE, RAW, ODD, EMPTY = range(8)
INITIALISING, INITWAIT, INITIALISED, CONNECTED, CLOSING, CLOSED = 1, 2, 3, 4, 5, 6


def op(kind, a=0, b=0, c=0):
    return struct.pack("<BBHI", kind, a & 0xff, b & 0xffff, c & 0xffffffff)


def key(name, how, c=0):
    return op(0, KEYS.index(name), how, c)


def raw(name, text):  # up to 4 raw bytes
    return key(name, RAW, struct.unpack("<I", text.encode().ljust(4, b"\0")[:4])[0])


def state(s):
    return op(1, s)


def spurious():
    return op(2)


def reg(off, value, size=4, seq="next"):
    mode = {"next": 0, "same": 1, "set": 2, "far": 3}[seq]
    return op(3, size | mode << 3, off, value)


def poke(page, off, value):
    return op(4, page, off, value)


def scribble(off, value):  # on the control page
    return op(4, 0x80, off, value)


def grant(ref, how):  # 0 rw, 1 ro, 2 other domain, 3 end
    return op(5, how, ref)


def port(p, how):  # 0 for the backend, 1 for another domain, 2 closed
    return op(6, how, p)


def kick(q):
    return op(7, q)


def release():
    return op(8)


def restart():
    return op(9)


def good_keys(queues=1):
    return b"".join([key("protocol-version", GOOD), key("ctrl-ref", GOOD), key("ctrl-evtchn", GOOD),
                     key("num-queues", GOOD, queues - 1), key("queue-0/evtchn", GOOD),
                     key("queue-1/evtchn", GOOD)])


def connect(queues=1):
    return good_keys(queues) + state(INITIALISING) + state(INITIALISED)


def grant_addr(ref, off=0):
    return (1 << 63) | ref << 12 | off


def queue_regs(q, size, desc_ref, avail_ref, used_ref):
    out = [reg(0x30, q), reg(0x38, size)]
    for lo, ref in ((0x80, desc_ref), (0x90, avail_ref), (0xa0, used_ref)):
        a = grant_addr(ref)
        out += [reg(lo, a & 0xffffffff), reg(lo + 4, a >> 32)]
    return b"".join(out + [reg(0x44, 1)])


def bring_up(queues=1):
    out = [reg(0x70, 0), reg(0x70, 1), reg(0x70, 3), reg(0x24, 1), reg(0x20, 1), reg(0x24, 0),
           reg(0x20, 0), reg(0x70, 11)]
    out.append(queue_regs(0, 8, 2, 3, 4))
    if queues > 1:
        out.append(queue_regs(1, 8, 7, 8, 9))
    out.append(reg(0x70, 15))
    return b"".join(out)


def request(desc_page=2, avail_page=3, out_ref=5, in_ref=6):
    # desc 0: 16 readable bytes on out_ref, next 1; desc 1: 16 writable on in_ref
    d = struct.pack("<QIHHQIHH", grant_addr(out_ref), 16, 1, 1, grant_addr(in_ref), 16, 2, 0)
    ops = [poke(desc_page, i, struct.unpack_from("<I", d, i)[0]) for i in range(0, len(d), 4)]
    ops.append(poke(avail_page, 0, 1 << 16))  # flags 0, idx 1
    ops.append(poke(avail_page, 4, 0))        # ring[0] = 0
    ops += [poke(out_ref, i, 0x01020304 + i) for i in range(0, 16, 4)]
    return b"".join(ops)


def requests(queues):
    out = request() + kick(0)
    if queues > 1:
        out += request(7, 8, 10, 11) + kick(1)
    return out


def echo(flags, queues=1, extra=b""):
    return bytes([flags]) + b"".join([
        connect(queues), bring_up(queues), requests(queues), extra,
        reg(0x64, 1), kick(0), state(CLOSING), state(CLOSED), state(INITIALISING), state(INITIALISED),
        bring_up(queues), requests(queues), restart()])


def reset_new_rings():
    # Four cached pages: the rings and one buffer fill them; after a device
    # reset the driver puts its rings on new grants.
    out = [bytes([2 << 2]), connect(), bring_up(), request(), kick(0), reg(0x70, 0), reg(0x70, 1), reg(0x70, 3),
           reg(0x24, 1), reg(0x20, 1), reg(0x24, 0), reg(0x20, 0), reg(0x70, 11), queue_regs(0, 8, 7, 8, 9),
           reg(0x70, 15), request(7, 8, 10, 11), kick(0)]
    return b"".join(out)


def refusals():
    bad = [raw("ctrl-ref", "abc\n"), key("num-queues", NUM, 99), key("ctrl-evtchn", HUGE, 1),
           key("queue-0/evtchn", REMOVE), key("protocol-version", NUM, 2), key("ctrl-ref", NUM, 30000),
           key("ctrl-ref", NUM, 14), key("ctrl-ref", NUM, 12), key("ctrl-ref", NUM, 20),
           key("ctrl-evtchn", NUM, 5), port(6, 1) + key("ctrl-evtchn", NUM, 6),
           key("queue-0/evtchn", NUM, 1), key("num-queues", NUM, 0), key("protocol-version", ODD, 2),
           key("ctrl-ref", EMPTY), key("num-queues", GOOD, 1) + raw("queue-1/evtchn", "3\x1b[m"), key("num-queues", GOOD, 1) + key("queue-1/evtchn", NUM, 7)]
    out = [bytes([0])]
    for b in bad:
        out += [good_keys(), b, state(INITIALISING), state(INITIALISED)]
    out += [connect(2), spurious()]
    return b"".join(out)


def states():
    seq = [state(INITIALISED), state(CLOSING), connect(), state(INITIALISED), spurious(), state(INITIALISED),
           state(CLOSING), state(INITIALISED), state(INITIALISING), state(INITIALISED), state(10), state(INITIALISED),
           state(11), state(9), state(0), state(INITWAIT), state(CONNECTED), state(7), state(8), spurious(),
           state(INITIALISING), state(INITIALISED), restart(), state(INITIALISED), state(INITIALISING),
           state(INITIALISED), raw("state", "4x"), key("state", HUGE, 1), key("state", EMPTY), spurious(),
           state(INITIALISING), state(INITIALISED)]
    return bytes([4]) + b"".join(seq)


def mailbox():
    before = [reg(0x70, 1), reg(0x70, 3, seq="same"), scribble(0xf00, 7)]
    during = [reg(0x70, 1), reg(0x70, 1, seq="same"), reg(0x70, 3, 2), reg(0x70, 3, 0), reg(0x70, 3, 7),
              reg(0xf00, 1), reg(0xeff, 1, 1), reg(0, 5, seq="far"), reg(0xffff, 5, seq="set"),
              op(3, 4 | 3 << 3, 0, 0xffffffff), reg(0x100, 0xdeadbeef), reg(0x104, 0xdeadbeef), reg(0x10f, 1, 1),
              reg(0x110, 1, 2), reg(0x30, 0xffff), reg(0x38, 0xffffffff), reg(0x44, 1), scribble(0xf20, 0xffffffff),
              scribble(0xf04, 0x60), reg(0x70, 0), reg(0x50, 0), reg(0x64, 3), reg(0x70, 0xff),
              scribble(0x0, 0), scribble(0x70, 0xff), reg(0x70, 0, seq="set")]
    return bytes([1]) + b"".join(before + [connect()] + during + [state(CLOSED)] + before)


def teardown():
    seq = [connect(2), bring_up(2), request(), kick(0), grant(0, 3), grant(5, 3), grant(2, 2), port(1, 2),
           port(2, 2), reg(0x70, 0), kick(1), kick(3), state(CLOSING), grant(0, 3), port(1, 0), port(2, 0),
           grant(0, 1), connect(2), grant(0, 0), connect(2), restart(), port(3, 2), port(3, 1), connect(2)]
    return bytes([2]) + b"".join(seq)


def upgrade(change=None):  # op 9 with byte 0 bit 4: a live upgrade; change = (xor, position)
    if change is None:
        return op(9)
    return op(9, change[0], 1, change[1])


def upgraded(flags, queues=1, change=None):
    # Connected and serving, then upgraded (the record changed or not), then
    # the driver carries on: new requests on the same rings, then a second
    # upgrade and more.
    return bytes([flags | 0x10]) + b"".join([
        connect(queues), bring_up(queues), requests(queues), upgrade(change),
        poke(3, 0, 2 << 16), kick(0), upgrade(), kick(0), reg(0x64, 1), kick(0), state(CLOSING), state(CLOSED)])


seeds = {
    "upgrade_map": upgraded(0),
    "upgrade_copy": upgraded(1),
    "upgrade_two_queues": upgraded(0, 2),
    "upgrade_held": upgraded(2, 1),
    "upgrade_changed_mirror": upgraded(0, 1, (0x41, 3)),
    "upgrade_changed_snapshot": upgraded(0, 1, (0xff, 200)),
    "upgrade_before_connect": bytes([0x10]) + upgrade() + connect() + bring_up() + requests(1) + upgrade(),
    "echo_map": echo(0),
    "echo_copy": echo(1),
    "echo_map_two_queues": echo(0, 2),
    "echo_map_held_cache4": echo(2 | 2 << 2, 1, release() + kick(0)),
    "echo_map_no_cache": echo(3 << 2),
    "reset_new_rings": reset_new_rings(),
    "refusals": refusals(),
    "states": states(),
    "mailbox": mailbox(),
    "teardown": teardown(),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {OUT}")
