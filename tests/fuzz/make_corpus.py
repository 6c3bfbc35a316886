#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates the seed corpora of fuzz_split_ring and fuzz_packed_ring.

    python3 tests/fuzz/make_corpus.py            # rewrites corpus/{split,packed}/seed-*

The input format is documented at the top of ring_fuzzer.cc. Each seed is a
valid or hostile ring (virtio.md sections 1 and 2) plus a short program of
device and driver operations. Generated files are named seed-*; files named
otherwise (regression inputs from fuzzing findings) are left alone.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = 0x10000
DESC = 0x10000
DRIVER = 0x11000
DEVICE = 0x11400
DATA = 0x12000
END = 0x20000

# Header flags.
F_INDIRECT, F_EVENT_IDX, F_COPY, F_CUSTOM, F_BIG, F_RAWSIZE, F_HIGH = 1, 2, 4, 8, 16, 32, 64
# Descriptor flags.
NEXT, WRITE, INDIRECT = 1, 2, 4
AVAIL, USED = 1 << 7, 1 << 15

# Ops (low nibble) -- see ring_fuzzer.cc.
OP_POP, OP_DRAIN, OP_READ, OP_WRITE, OP_ADD_USED, OP_COMPLETE, OP_PUBLISH = 0, 1, 2, 3, 4, 5, 6
OP_ENABLE, OP_DISABLE, OP_MUTATE, OP_BASE_RT, OP_SET_BASE, OP_PUSH, OP_DRIVER_FIELD = 7, 8, 9, 10, 11, 12, 13
OP_ARM_FAULT, OP_RESET_OR_FAIL = 14, 15


class Seed:
    def __init__(self, packed, size, flags=0, raw_size=None, addrs=None):
        self.packed = packed
        self.flags = flags
        self.size = size
        if raw_size is not None:
            self.flags |= F_RAWSIZE
            self.raw_size = raw_size
        else:
            self.raw_size = 0
        if packed:
            assert 1 <= size <= 256
            self.size_sel = size - 1
        else:
            assert size & (size - 1) == 0 and size <= 256
            self.size_sel = size.bit_length() - 1
        self.addrs = addrs  # (desc, driver, device) as guest addresses, or None
        if addrs is not None:
            self.flags |= F_CUSTOM
        self.desc = bytearray()
        self.driver = bytearray()
        self.device = bytearray()
        self.data = bytearray()
        self.ops = bytearray()

    # -- memory images
    @property
    def e(self):
        return ">" if self.flags & F_BIG else "<"

    @staticmethod
    def _put(img, off, b):
        if len(img) < off + len(b):
            img.extend(b"\0" * (off + len(b) - len(img)))
        img[off:off + len(b)] = b

    def split_desc(self, i, addr, length, flags=0, nxt=0):
        self._put(self.desc, 16 * i, struct.pack(self.e + "QIHH", addr, length, flags, nxt))

    def avail(self, heads, idx=None, flags=0, used_event=None):
        n = self.size
        self._put(self.driver, 0, struct.pack(self.e + "HH", flags, len(heads) if idx is None else idx))
        for k, h in enumerate(heads):
            self._put(self.driver, 4 + 2 * (k % n), struct.pack(self.e + "H", h))
        if used_event is not None:
            self._put(self.driver, 4 + 2 * n, struct.pack(self.e + "H", used_event))

    def used_idx(self, idx):
        self._put(self.device, 2, struct.pack(self.e + "H", idx))

    def packed_desc(self, slot, addr, length, id_, flags=0, avail=True, wrap=True):
        if avail:
            flags |= AVAIL if wrap else USED
        self._put(self.desc, 16 * slot, struct.pack("<QIHH", addr, length, id_, flags))

    def driver_event(self, off_wrap, flags):
        self._put(self.driver, 0, struct.pack("<HH", off_wrap, flags))

    def data_at(self, addr, b):
        assert DATA <= addr < END
        self._put(self.data, addr - DATA, b)

    def table(self, addr, entries):
        """Indirect table: entries of (addr, len, flags, next) (split) or (addr, len, flags) (packed)."""
        out = b""
        for ent in entries:
            if self.packed:
                a, l, f = ent
                out += struct.pack("<QIHH", a, l, 0, f)
            else:
                a, l, f, nx = ent
                out += struct.pack(self.e + "QIHH", a, l, f, nx)
        self.data_at(addr, out)

    # -- ops
    def op(self, code, h=0, *operands):
        self.ops.append((h << 4) | code)
        for kind, v in operands:
            self.ops += struct.pack("<" + kind, v)
        return self

    def pop(self, k=1):
        for _ in range(k):
            self.op(OP_POP)
        return self

    def drain(self):
        return self.op(OP_DRAIN)

    def read(self, c, off, length):
        return self.op(OP_READ, c, ("H", off), ("H", length))

    def write(self, c, off, length, pat=0x5A):
        return self.op(OP_WRITE, c, ("H", off), ("H", length), ("B", pat))

    def add_used(self, c, mode, val=0):
        return self.op(OP_ADD_USED, c, ("B", mode), ("I", val))

    def complete(self, c=0):
        return self.op(OP_COMPLETE, c)

    def publish(self):
        return self.op(OP_PUBLISH)

    def enable(self):
        return self.op(OP_ENABLE)

    def disable(self):
        return self.op(OP_DISABLE)

    def mutate(self, area, off, b):
        self.op(OP_MUTATE, area, ("H", off), ("B", len(b)))
        self.ops += b
        return self

    def base_roundtrip(self):
        return self.op(OP_BASE_RT)

    def set_base(self, v):
        return self.op(OP_SET_BASE, 0, ("I", v))

    def push_split(self, head, addr, length, flags=0, nxt=0, no_avail=False):
        h = (1 if flags & WRITE else 0) | (2 if flags & NEXT else 0) | (4 if flags & INDIRECT else 0)
        h |= 8 if no_avail else 0
        return self.op(OP_PUSH, h, ("B", head), ("H", addr - DATA), ("H", length), ("B", nxt))

    def push_packed(self, addr, length, id_, flags=0, wrong_wrap=False):
        h = (1 if flags & WRITE else 0) | (2 if flags & NEXT else 0) | (4 if flags & INDIRECT else 0)
        h |= 8 if wrong_wrap else 0
        return self.op(OP_PUSH, h, ("H", addr - DATA), ("H", length), ("H", id_))

    def driver_field(self, sel, v):
        return self.op(OP_DRIVER_FIELD, sel, ("H", v))

    def arm_fault(self, k):
        """Copy-only memory: the k-th channel copy from now fails (Unavailable)."""
        return self.op(OP_ARM_FAULT, 0, ("B", k))

    def reset(self):
        """Device reset: the queue is destroyed and created again."""
        return self.op(OP_RESET_OR_FAIL, 0)

    def fail(self, err):
        """DeviceQueue::Fail(RingError(err)), err in 0..7 (0 = kNone, a no-op)."""
        return self.op(OP_RESET_OR_FAIL, (err << 1) | 1)

    # -- serialisation
    def bytes(self):
        def rel(a):
            if self.flags & F_HIGH:
                return a & 0xFFFFFFFF
            return (a - BASE) & 0xFFFFFFFF
        addrs = self.addrs or (DESC, DRIVER, DEVICE)
        hdr = struct.pack("<BBH", self.flags, self.size_sel, self.raw_size)
        hdr += struct.pack("<III", *(rel(a) for a in addrs))
        hdr += struct.pack("<HHHH", len(self.desc), len(self.driver), len(self.device), len(self.data))
        assert len(hdr) == 24
        return hdr + bytes(self.desc) + bytes(self.driver) + bytes(self.device) + bytes(self.data) + bytes(self.ops)


def both(make):
    """A seed on mapped memory and the same on copy-only memory."""
    s = make()
    c = make()
    c.flags |= F_COPY
    return [("", s), ("-copy", c)]


# ----------------------------------------------------------------- split
def split_seeds():
    out = {}
    ALL = F_INDIRECT | F_EVENT_IDX

    def add(name, make, copy=True):
        for suffix, s in (both(make) if copy else [("", make())]):
            out[name + suffix] = s.bytes()

    def valid_1desc():
        s = Seed(False, 8, ALL)
        s.split_desc(0, DATA, 64, 0)
        s.avail([0])
        s.data_at(DATA, bytes(range(64)))
        return s.pop().read(0, 0, 64).add_used(0, 1).publish()
    add("valid-1desc", valid_1desc)

    def valid_multi():
        s = Seed(False, 8, ALL)
        s.split_desc(0, DATA, 16, NEXT, 1)
        s.split_desc(1, DATA + 0x100, 32, NEXT, 2)
        s.split_desc(2, DATA + 0x200, 64, WRITE | NEXT, 3)
        s.split_desc(3, DATA + 0x300, 64, WRITE)
        s.avail([0], used_event=0)
        return s.pop().read(0, 8, 40).write(0, 60, 68).add_used(0, 0, 1000).publish().enable()
    add("valid-multi", valid_multi)

    def valid_indirect():
        s = Seed(False, 4, ALL)
        s.split_desc(0, DATA + 0x1000, 48, INDIRECT | WRITE)  # WRITE on the table descriptor is ignored
        s.table(DATA + 0x1000, [(DATA, 32, NEXT, 1), (DATA + 0x100, 32, WRITE | NEXT, 2), (DATA + 0x200, 16, WRITE, 0)])
        s.avail([0])
        return s.drain()
    add("valid-indirect", valid_indirect)

    def direct_then_indirect():
        s = Seed(False, 4, ALL)
        s.split_desc(0, DATA, 16, NEXT, 2)
        s.split_desc(2, DATA + 0x1000, 32, INDIRECT)
        s.table(DATA + 0x1000, [(DATA + 0x100, 8, NEXT, 1), (DATA + 0x200, 8, WRITE, 0)])
        s.avail([0])
        return s.pop().complete().publish()
    add("valid-direct-then-indirect", direct_then_indirect)

    def full_queue():
        s = Seed(False, 16, F_EVENT_IDX)
        for i in range(16):
            s.split_desc(i, DATA + 0x100 * i, 0x80, WRITE if i % 2 else 0)
        s.avail(list(range(16)), used_event=7)
        return s.pop(8).complete(3).complete(0).publish().drain().enable().disable()
    add("valid-full-queue", full_queue)

    def chain_exactly_queue_size():
        s = Seed(False, 4, 0)
        for i in range(4):
            s.split_desc(i, DATA + 0x40 * i, 0x40, NEXT if i < 3 else WRITE, i + 1)
        s.avail([0])
        return s.drain()
    add("valid-chain-of-queue-size", chain_exactly_queue_size)

    def wraparound():
        # Free-running indices across 65535 -> 0 and ring slots across n -> 0.
        s = Seed(False, 4, F_EVENT_IDX)
        s.used_idx(0xFFFE)
        s.set_base(0xFFFE).driver_field(0, 0xFFFE)
        for k in range(7):
            s.push_split(k % 4, DATA + 0x100 * k, 0x40, WRITE if k % 2 else 0)
            s.pop().complete().publish().enable()
        return s.base_roundtrip().drain()
    add("valid-wraparound", wraparound)

    def big_endian():
        s = Seed(False, 8, F_BIG | F_INDIRECT)
        s.split_desc(0, DATA, 16, NEXT, 5)
        s.split_desc(5, DATA + 0x1000, 32, INDIRECT)
        s.table(DATA + 0x1000, [(DATA + 0x100, 8, NEXT, 1), (DATA + 0x200, 8, WRITE, 0)])
        s.split_desc(1, DATA + 0x300, 24, WRITE)
        s.avail([0, 1])
        return s.pop(2).complete(1).complete(0).publish().disable().enable()
    add("valid-legacy-big-endian", big_endian)

    def notify_toggles():
        s = Seed(False, 2, 0)
        s.avail([], flags=1)
        for k in range(4):
            s.enable().push_split(0, DATA, 8, 0).pop().complete().publish().disable()
            s.driver_field(1, k & 1)
        return s
    add("valid-notification-toggles", notify_toggles)

    def reset_with_stale_chains():
        s = Seed(False, 4, ALL)
        s.split_desc(0, DATA, 16, 0)
        s.split_desc(1, DATA + 0x100, 16, WRITE)
        s.avail([0, 1])
        # Chains popped before the reset must be dropped by the new queue.
        return s.pop(2).reset().write(1, 0, 16).add_used(1, 1).complete(0).publish().drain()
    add("valid-reset-with-stale-chains", reset_with_stale_chains)

    def fail_from_backend():
        s = Seed(False, 4, 0)
        s.split_desc(0, DATA, 16, WRITE)
        s.avail([0, 0])
        return s.pop().fail(0).complete().publish().fail(7).pop()
    add("fail-from-backend", fail_from_backend, copy=False)

    def mutate_between_pops():
        s = Seed(False, 8, ALL)
        s.split_desc(0, DATA, 16, 0)
        s.split_desc(1, DATA + 0x100, 16, WRITE)
        s.avail([0, 1, 1])
        # Pop one, then the driver rewrites descriptor 1 and the third avail entry.
        s.pop().mutate(0, 16, struct.pack("<QIHH", 0x40000, 16, WRITE, 0))
        s.mutate(1, 8, struct.pack("<H", 9))
        return s.pop(2).drain()
    add("hostile-mutate-between-pops", mutate_between_pops)

    def over_claim():
        s = Seed(False, 4, 0)
        s.split_desc(0, DATA, 8, NEXT, 1)
        s.split_desc(1, DATA + 0x10, 16, WRITE)
        s.avail([0])
        return s.pop().write(0, 0, 16).read(0, 0, 8).add_used(0, 0, 0xFFFFFFFF).publish()
    add("used-len-over-claim", over_claim)

    def copy_past_end():
        s = Seed(False, 4, 0)
        s.split_desc(0, DATA, 8, NEXT, 1)
        s.split_desc(1, DATA + 0x10, 16, WRITE)
        s.avail([0])
        return s.pop().read(0, 4, 8).write(0, 8, 16).complete(0)
    add("copy-past-chain-end", copy_past_end)

    # Hostile rings: each must end in its RingError.
    def hostile(name, build, flags=ALL, size=8, copy=True):
        def make():
            s = Seed(False, size, flags)
            build(s)
            return s.drain()
        add("hostile-" + name, make, copy)

    hostile("loop", lambda s: (s.split_desc(0, DATA, 8, NEXT, 1), s.split_desc(1, DATA, 8, NEXT, 0), s.avail([0])))
    hostile("chain-longer-than-queue", lambda s: (
        [s.split_desc(i, DATA, 8, NEXT, (i + 1) % 4) for i in range(4)], s.avail([2])), size=4)

    def nested(s):
        s.split_desc(0, DATA + 0x1000, 32, INDIRECT)
        s.table(DATA + 0x1000, [(DATA, 8, NEXT, 1), (DATA + 0x1100, 16, INDIRECT, 0)])
        s.table(DATA + 0x1100, [(DATA, 8, 0, 0)])
        s.avail([0])
    hostile("nested-indirect", nested)
    hostile("indirect-with-next", lambda s: (
        s.split_desc(0, DATA + 0x1000, 16, INDIRECT | NEXT, 1), s.table(DATA + 0x1000, [(DATA, 8, 0, 0)]),
        s.split_desc(1, DATA, 8, 0), s.avail([0])))
    hostile("indirect-len-0", lambda s: (s.split_desc(0, DATA + 0x1000, 0, INDIRECT), s.avail([0])))
    hostile("indirect-len-not-16n", lambda s: (
        s.split_desc(0, DATA + 0x1000, 24, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0, 0), (DATA, 8, 0, 0)]),
        s.avail([0])))
    hostile("indirect-not-negotiated", lambda s: (
        s.split_desc(0, DATA + 0x1000, 16, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0, 0)]), s.avail([0])),
        flags=F_EVENT_IDX)
    hostile("indirect-table-loop", lambda s: (
        s.split_desc(0, DATA + 0x1000, 48, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 8, NEXT, 1), (DATA, 8, NEXT, 2), (DATA, 8, NEXT, 0)]), s.avail([0])))
    hostile("indirect-next-out-of-range", lambda s: (
        s.split_desc(0, DATA + 0x1000, 32, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 8, NEXT, 1), (DATA, 8, NEXT, 2)]), s.avail([0])))
    hostile("indirect-table-outside-memory", lambda s: (
        s.split_desc(0, END - 16, 64, INDIRECT), s.avail([0])))
    hostile("indirect-too-large", lambda s: (
        s.split_desc(0, DATA, 16 * 65536, INDIRECT), s.avail([0])))
    # Copy-only memory accepts out-of-memory buffers at pop, so the sum can overflow.
    hostile("length-overflow", lambda s: (
        s.split_desc(0, DATA, 0xFFFFFFF0, NEXT, 1), s.split_desc(1, DATA, 0x20, WRITE), s.avail([0])))
    hostile("indirect-length-overflow", lambda s: (
        s.split_desc(0, DATA + 0x1000, 32, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 0x80000000, NEXT, 1), (DATA, 0x80000000, WRITE, 0)]), s.avail([0])))
    hostile("buffer-outside-memory", lambda s: (s.split_desc(0, END + 0x1000, 64, WRITE), s.avail([0])))
    hostile("buffer-straddles-end", lambda s: (s.split_desc(0, END - 8, 64, WRITE), s.avail([0])))
    hostile("buffer-below-memory", lambda s: (s.split_desc(0, BASE - 4, 8, 0), s.avail([0])))
    hostile("buffer-address-wraps", lambda s: (s.split_desc(0, 0xFFFFFFFFFFFFFFF8, 16, 0), s.avail([0])))
    hostile("avail-idx-jump", lambda s: (s.split_desc(0, DATA, 8, 0), s.avail([0], idx=9)))

    def idx_backwards(s):
        s.split_desc(0, DATA, 8, 0)
        s.avail([0])
        s.pop().complete().publish().driver_field(0, 0)
    hostile("avail-idx-backwards", idx_backwards)
    hostile("readable-after-writable", lambda s: (
        s.split_desc(0, DATA, 8, WRITE | NEXT, 1), s.split_desc(1, DATA + 0x10, 8, 0), s.avail([0])))
    hostile("indirect-readable-after-writable", lambda s: (
        s.split_desc(0, DATA + 0x1000, 32, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 8, WRITE | NEXT, 1), (DATA, 8, 0, 0)]), s.avail([0])))
    hostile("head-out-of-range", lambda s: (s.avail([8])))
    hostile("next-out-of-range", lambda s: (s.split_desc(0, DATA, 8, NEXT, 8), s.avail([0])))

    def valid_then_bad(s):
        s.split_desc(0, DATA, 8, WRITE)
        s.split_desc(1, DATA, 8, NEXT, 200)
        s.avail([0, 1])
        s.pop().write(0, 0, 8).add_used(0, 1).publish()
    hostile("valid-then-bad", valid_then_bad)

    # Ring locations DeviceQueue::Create must reject (mapped) or survive (copy-only).
    def at(name, addrs, flags=0, size=8, raw=None):
        def make():
            s = Seed(False, size, ALL | flags, raw_size=raw, addrs=addrs)
            s.split_desc(0, DATA, 8, 0)
            s.avail([0])
            return s.drain()
        add("create-" + name, make)
    at("desc-misaligned", (DESC + 8, DRIVER, DEVICE))
    at("avail-misaligned", (DESC, DRIVER + 1, DEVICE))
    at("used-misaligned", (DESC, DRIVER, DEVICE + 2))
    at("used-outside-memory", (DESC, DRIVER, END - 16))
    at("desc-below-memory", (BASE - 0x100, DRIVER, DEVICE))
    at("high-addresses", (0xFFFFFFFFFFFFFF00, 0xFFFFFFFFFFFFFF00, 0xFFFFFFFFFFFFFF00), flags=F_HIGH)
    at("size-not-power-of-2", None, raw=6)
    at("size-0", None, raw=0)
    at("size-too-big", None, raw=65535)
    at("size-32768", None, raw=32768)

    # Copy-only memory: rings partly outside memory are only found at use.
    def partial(name, addrs, flags, build):
        s = Seed(False, 8, flags | F_COPY, addrs=addrs)
        build(s)
        out["copy-ring-" + name] = s.bytes()

    def pushes(s):
        s.push_split(0, DATA, 8, WRITE).push_split(1, DATA + 0x10, 8, 0)
        s.pop(2).complete(0).complete(0).publish().enable().disable()
    # used.flags/used.idx below memory, used.ring inside: the idx store fails.
    partial("used-idx-outside", (DESC, DRIVER, BASE - 4), 0, pushes)
    # avail.flags below memory, avail.idx inside: Publish's flags load fails.
    partial("avail-flags-outside", (DATA + 0x4000, BASE - 2, DEVICE), 0, pushes)
    # used_event past the end of memory: Publish's used_event load fails.
    partial("used-event-outside", (DESC, END - 20, DEVICE), F_EVENT_IDX, pushes)
    # avail_event past the end: EnableNotifications fails.
    partial("avail-event-outside", (DESC, DRIVER, END - 68), F_EVENT_IDX, pushes)

    # Copy channel faults (Unavailable -> kMemoryFault), one per place a copy happens.
    def fault(name, k, build, flags=F_EVENT_IDX):
        s = Seed(False, 4, flags | F_COPY)
        s.split_desc(0, DATA, 16, NEXT, 1)
        s.split_desc(1, DATA + 0x100, 16, WRITE)
        s.avail([0, 0])
        build(s, k)
        out["copy-fault-" + name] = s.bytes()
    fault("avail-idx", 1, lambda s, k: s.arm_fault(k).pop())
    fault("avail-ring", 2, lambda s, k: s.arm_fault(k).pop())
    fault("desc-table", 3, lambda s, k: s.arm_fault(k).pop())
    fault("avail-idx-reread", 2, lambda s, k: s.driver_field(0, 100).arm_fault(k).pop())
    fault("chain-read", 1, lambda s, k: s.pop().arm_fault(k).read(0, 0, 16).complete(0))
    fault("chain-write", 1, lambda s, k: s.pop().arm_fault(k).write(0, 0, 16).complete(0))
    fault("publish-used-ring", 1, lambda s, k: s.pop().complete().arm_fault(k).publish())
    fault("publish-used-idx", 2, lambda s, k: s.pop().complete().arm_fault(k).publish())
    fault("publish-used-event", 3, lambda s, k: s.pop().complete().arm_fault(k).publish())
    fault("enable", 1, lambda s, k: s.arm_fault(k).enable())
    fault("enable-avail-idx", 2, lambda s, k: s.arm_fault(k).enable())
    fault("disable", 1, lambda s, k: s.arm_fault(k).disable(), flags=0)
    fault("set-base", 1, lambda s, k: s.pop().arm_fault(k).base_roundtrip())
    fault("indirect-table", 4, lambda s, k: (
        s.split_desc(2, DATA + 0x1000, 16, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0, 0)]),
        s.avail([2]), s.arm_fault(k).pop()), flags=F_INDIRECT)
    return out


# ---------------------------------------------------------------- packed
def packed_seeds():
    out = {}
    ALL = F_INDIRECT | F_EVENT_IDX

    def add(name, make, copy=True):
        for suffix, s in (both(make) if copy else [("", make())]):
            out[name + suffix] = s.bytes()

    def valid_1desc():
        s = Seed(True, 8, ALL)
        s.packed_desc(0, DATA, 64, 0, 0)
        s.data_at(DATA, bytes(range(64)))
        return s.pop().read(0, 0, 64).add_used(0, 1).publish()
    add("valid-1desc", valid_1desc)

    def valid_multi():
        s = Seed(True, 8, ALL)
        s.packed_desc(0, DATA, 16, 0xFFFF, NEXT)  # id only counts in the last descriptor
        s.packed_desc(1, DATA + 0x100, 32, 0, NEXT)
        s.packed_desc(2, DATA + 0x200, 64, 0, WRITE | NEXT)
        s.packed_desc(3, DATA + 0x300, 64, 5, WRITE)
        s.packed_desc(4, DATA + 0x400, 8, 2, 0)
        s.driver_event(0x8001, 2)
        return s.pop(2).read(0, 8, 40).write(0, 60, 68).complete(1).add_used(0, 0, 1000).publish().enable()
    add("valid-multi", valid_multi)

    def valid_indirect():
        s = Seed(True, 4, ALL)
        s.packed_desc(0, DATA + 0x1000, 48, 3, INDIRECT | WRITE)
        s.table(DATA + 0x1000, [(DATA, 32, 0), (DATA + 0x100, 32, WRITE | NEXT), (DATA + 0x200, 16, WRITE)])
        return s.drain()
    add("valid-indirect", valid_indirect)

    def odd_size():
        s = Seed(True, 5, F_EVENT_IDX)
        for i in range(5):
            s.packed_desc(i, DATA + 0x80 * i, 0x80, 4 - i, WRITE if i & 1 else 0)
        s.driver_event(0x8003, 2)
        return s.pop(3).complete(2).complete(0).publish().drain().enable()
    add("valid-size-5", odd_size)

    def wraparound():
        # More pushes than the ring has slots: both wrap counters flip.
        s = Seed(True, 3, F_EVENT_IDX)
        s.driver_event(0x0001, 2)
        for k in range(8):
            if k % 3 == 1:
                s.push_packed(DATA + 0x100 * k, 0x20, 0, NEXT)
                s.push_packed(DATA + 0x100 * k + 0x40, 0x20, 1, WRITE)
            else:
                s.push_packed(DATA + 0x100 * k, 0x40, k % 3, WRITE if k & 1 else 0)
            s.pop().complete().publish().enable()
        return s.base_roundtrip().drain()
    add("valid-wraparound", wraparound)

    def set_base_wrap():
        s = Seed(True, 4, 0)
        s.set_base((0 << 31) | (2 << 16) | (0 << 15) | 2)
        s.push_packed(DATA, 8, 1, 0).push_packed(DATA, 8, 2, 0)
        s.push_packed(DATA + 0x10, 8, 3, WRITE)
        return s.pop(3).complete(1).complete(0).complete(0).publish().disable().enable()
    add("valid-set-base-wrap", set_base_wrap)

    def notify_modes():
        s = Seed(True, 2, F_EVENT_IDX)
        for mode in (0, 1, 2, 2, 3):
            s.driver_field(2, mode).driver_field(0, 0x8000 | (mode & 1))
            s.push_packed(DATA, 8, 0, 0).pop().complete().publish().enable().disable()
        return s
    add("valid-notification-modes", notify_modes)

    def mutate_between_pops():
        s = Seed(True, 8, ALL)
        s.packed_desc(0, DATA, 16, 0, 0)
        s.packed_desc(1, DATA + 0x100, 16, 1, WRITE)
        s.packed_desc(2, DATA + 0x200, 16, 2, WRITE)
        s.pop().mutate(0, 16, struct.pack("<QIHH", 0x40000, 16, 1, WRITE | AVAIL))
        s.mutate(0, 32 + 14, struct.pack("<H", 0))  # slot 2 no longer available
        return s.pop(2).drain()
    add("hostile-mutate-between-pops", mutate_between_pops)

    def reset_with_stale_chains():
        s = Seed(True, 4, ALL)
        s.packed_desc(0, DATA, 16, 0, 0)
        s.packed_desc(1, DATA + 0x100, 16, 1, WRITE)
        return s.pop(2).reset().write(1, 0, 16).add_used(1, 1).complete(0).publish().drain()
    add("valid-reset-with-stale-chains", reset_with_stale_chains)

    def fail_from_backend():
        s = Seed(True, 4, 0)
        s.packed_desc(0, DATA, 16, 0, WRITE)
        s.packed_desc(1, DATA, 16, 1, WRITE)
        return s.pop().fail(0).complete().publish().fail(7).pop()
    add("fail-from-backend", fail_from_backend, copy=False)

    def not_available():
        s = Seed(True, 4, 0)
        s.packed_desc(0, DATA, 8, 0, 0, wrap=False)  # made available for the other wrap counter
        s.packed_desc(1, DATA, 8, 1, 0)
        return s.pop(2).enable().push_packed(DATA, 8, 0, 0).pop().drain()
    add("not-available-is-empty", not_available)

    def hostile(name, build, flags=ALL, size=8, copy=True):
        def make():
            s = Seed(True, size, flags)
            build(s)
            return s.drain()
        add("hostile-" + name, make, copy)

    hostile("chain-longer-than-ring", lambda s: [s.packed_desc(i, DATA, 8, 0, NEXT) for i in range(4)], size=4)
    hostile("bad-buffer-id", lambda s: s.packed_desc(0, DATA, 8, 8, 0))
    hostile("buffer-id-in-flight", lambda s: (
        s.packed_desc(0, DATA, 8, 3, 0), s.packed_desc(1, DATA, 8, 3, 0), s.pop(2)))

    def nested(s):
        s.packed_desc(0, DATA + 0x1000, 32, 0, INDIRECT)
        s.table(DATA + 0x1000, [(DATA, 8, 0), (DATA + 0x1100, 16, INDIRECT)])
    hostile("nested-indirect", nested)
    hostile("indirect-with-next", lambda s: (
        s.packed_desc(0, DATA + 0x1000, 16, 0, INDIRECT | NEXT), s.packed_desc(1, DATA, 8, 0, 0),
        s.table(DATA + 0x1000, [(DATA, 8, 0)])))
    hostile("indirect-after-direct", lambda s: (
        s.packed_desc(0, DATA, 8, 0, NEXT), s.packed_desc(1, DATA + 0x1000, 16, 0, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 8, 0)])))
    hostile("indirect-len-0", lambda s: s.packed_desc(0, DATA + 0x1000, 0, 0, INDIRECT))
    hostile("indirect-len-not-16n", lambda s: (
        s.packed_desc(0, DATA + 0x1000, 40, 0, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0)] * 3)))
    hostile("indirect-not-negotiated", lambda s: (
        s.packed_desc(0, DATA + 0x1000, 16, 0, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0)])),
        flags=F_EVENT_IDX)
    hostile("indirect-table-outside-memory", lambda s: s.packed_desc(0, END - 32, 64, 0, INDIRECT))
    hostile("indirect-too-large", lambda s: s.packed_desc(0, DATA, 16 * 65536, 0, INDIRECT))
    hostile("readable-after-writable", lambda s: (
        s.packed_desc(0, DATA, 8, 0, WRITE | NEXT), s.packed_desc(1, DATA, 8, 0, 0)))
    hostile("indirect-readable-after-writable", lambda s: (
        s.packed_desc(0, DATA + 0x1000, 32, 0, INDIRECT),
        s.table(DATA + 0x1000, [(DATA, 8, WRITE), (DATA, 8, 0)])))
    hostile("length-overflow", lambda s: (
        s.packed_desc(0, DATA, 0xFFFFFFF0, 0, NEXT), s.packed_desc(1, DATA, 0x20, 0, WRITE)))
    hostile("buffer-outside-memory", lambda s: s.packed_desc(0, END + 0x1000, 64, 0, WRITE))
    hostile("buffer-straddles-end", lambda s: s.packed_desc(0, END - 8, 64, 0, WRITE))
    hostile("buffer-address-wraps", lambda s: s.packed_desc(0, 0xFFFFFFFFFFFFFFF8, 16, 0, 0))

    def chain_wraps_ring():
        # A chain that runs past the last slot (its tail is in the next lap).
        s = Seed(True, 4, 0)
        s.set_base((1 << 31) | (3 << 16) | (1 << 15) | 3)
        s.push_packed(DATA, 8, 0, NEXT).push_packed(DATA + 0x10, 8, 0, NEXT).push_packed(DATA + 0x20, 8, 1, WRITE)
        return s.pop().complete().publish().enable().drain()
    add("valid-chain-wraps-ring", chain_wraps_ring)

    def at(name, addrs, flags=0, size=8, raw=None):
        def make():
            s = Seed(True, size, ALL | flags, raw_size=raw, addrs=addrs)
            s.packed_desc(0, DATA, 8, 0, 0)
            return s.drain()
        add("create-" + name, make)
    at("ring-misaligned", (DESC + 8, DRIVER, DEVICE))
    at("driver-misaligned", (DESC, DRIVER + 2, DEVICE))
    at("device-misaligned", (DESC, DRIVER, DEVICE + 1))
    at("ring-outside-memory", (END - 16, DRIVER, DEVICE))
    at("device-below-memory", (DESC, DRIVER, BASE - 4))
    at("high-addresses", (0xFFFFFFFFFFFFFFF0, 0xFFFFFFFFFFFFFFFC, 0xFFFFFFFFFFFFFFFC), flags=F_HIGH)
    at("size-0", None, raw=0)
    at("size-too-big", None, raw=40000)
    at("size-32768", None, raw=32768)

    # Copy-only memory: rings partly outside memory are only found at use.
    def partial(name, addrs, build, flags=0):
        s = Seed(True, 4, flags | F_COPY, addrs=addrs)
        build(s)
        out["copy-ring-" + name] = s.bytes()

    def used_wraps_outside(s):
        # Ring slot 0 is below memory, slots 1..3 are the desc area's first
        # three. Avail position 2, used position 3 (a mismatched base): the
        # second used descriptor lands in slot 0 and Publish's copy fails.
        s.packed_desc(1, DATA, 8, 0, WRITE)
        s.packed_desc(2, DATA + 0x10, 8, 1, 0)
        s.set_base((1 << 31) | (3 << 16) | (1 << 15) | 2)
        s.pop(2).complete(0).complete(0).publish()
    partial("used-slot-outside", (BASE - 16, DRIVER, DEVICE), used_wraps_outside)

    def one(s):
        s.packed_desc(0, DATA, 8, 0, WRITE)
        s.pop().complete().enable().disable().publish()
    partial("driver-event-outside", (DESC, BASE - 4, DEVICE), one, F_EVENT_IDX)
    partial("device-event-outside", (DESC, DRIVER, END), one, F_EVENT_IDX)
    partial("device-event-outside-no-event-idx", (DESC, DRIVER, END), one)

    # Copy channel faults (Unavailable -> kMemoryFault), one per place a copy happens.
    def fault(name, k, build, flags=F_EVENT_IDX):
        s = Seed(True, 4, flags | F_COPY)
        s.packed_desc(0, DATA, 16, 0, NEXT)
        s.packed_desc(1, DATA + 0x100, 16, 0, WRITE)
        s.packed_desc(2, DATA + 0x200, 16, 1, WRITE)
        s.driver_event(0, 2)
        build(s, k)
        out["copy-fault-" + name] = s.bytes()
    fault("window-first-copy", 1, lambda s, k: s.arm_fault(k).pop())
    fault("window-second-copy", 2, lambda s, k: s.arm_fault(k).pop())
    fault("chain-read", 1, lambda s, k: s.pop().arm_fault(k).read(0, 0, 16).complete(0))
    fault("chain-write", 1, lambda s, k: s.pop().arm_fault(k).write(0, 0, 16).complete(0))
    fault("publish-first-entry", 1, lambda s, k: s.pop(2).complete(0).complete(0).arm_fault(k).publish())
    fault("publish-other-entries", 2, lambda s, k: s.pop(2).complete(0).complete(0).arm_fault(k).publish())
    fault("publish-first-flags", 3, lambda s, k: s.pop(2).complete(0).complete(0).arm_fault(k).publish())
    fault("publish-driver-event", 4, lambda s, k: s.pop(2).complete(0).complete(0).arm_fault(k).publish())
    fault("enable-off-wrap", 1, lambda s, k: s.arm_fault(k).enable())
    fault("enable-flags", 2, lambda s, k: s.arm_fault(k).enable())
    fault("enable-head", 3, lambda s, k: s.arm_fault(k).enable())
    fault("disable", 1, lambda s, k: s.arm_fault(k).disable(), flags=0)
    fault("desc-outside-window", 3, lambda s, k: (
        s.set_base((1 << 31) | (3 << 16) | (1 << 15) | 3),
        s.push_packed(DATA, 8, 0, NEXT), s.push_packed(DATA + 0x10, 8, 1, WRITE), s.arm_fault(k).pop()))
    fault("indirect-table", 3, lambda s, k: (
        s.packed_desc(3, DATA + 0x1000, 16, 2, INDIRECT), s.table(DATA + 0x1000, [(DATA, 8, 0)]),
        s.set_base((1 << 31) | (3 << 16) | (1 << 15) | 3), s.arm_fault(k).pop()), flags=F_INDIRECT)
    return out


def write(kind, seeds):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for name, b in sorted(seeds.items()):
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(b)
    print(f"{kind}: {len(seeds)} seeds in {os.path.relpath(d)}")


def main():
    write("split", split_seeds())
    write("packed", packed_seeds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
