#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates the seed corpus of fuzz_net (net_fuzzer.cc).

    python3 tests/fuzz/make_net_corpus.py        # rewrites corpus/net/seed-*

The input format is documented at the top of net_fuzzer.cc: byte 0 % 4 picks
TX path (0), control queue (1), receive filter and flow hash (2) or checksum
completion and MAC text (3). The TX seeds are frames as a Linux guest sends
them: TSO/USO with NEEDS_CSUM and the pseudo-header sum in the checksum
field. Generated files are named seed-*; files named otherwise (regression
inputs from fuzzing findings) are left alone.
"""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "net")

# Feature bits (virtio 1.2 §5.1.3).
CSUM, GUEST_CSUM, CTRL_GUEST_OFFLOADS = 0, 1, 2
GUEST_TSO4, GUEST_TSO6, GUEST_ECN, GUEST_UFO = 7, 8, 9, 10
HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_UFO = 11, 12, 13, 14
CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR = 17, 18, 19, 20, 21, 22, 23
HOST_USO = 56

NEEDS_CSUM, DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
# Receiver caps byte.
C_CSUM, C_TSO4, C_TSO6, C_ECN, C_USO, C_UNCHECKED = 1, 2, 4, 8, 16, 0x80


def bits(*b):
    v = 0
    for x in b:
        v |= 1 << x
    return v


ALL_HOST = bits(CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_UFO, HOST_USO)


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum(b):
    if len(b) % 2:
        b = b + b"\0"
    return fold(sum(struct.unpack("!%dH" % (len(b) // 2), b)))


def pattern(n, seed):
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def frame(v6=False, udp=False, vlan=None, payload=b"", flags=0x18, seq=1000, ip_id=0x1234, opts=12):
    """Ethernet (+tag) + IPv4/IPv6 + TCP (with options)/UDP + payload, the
    layer-4 checksum field holding the pseudo-header sum (not complemented),
    as Linux leaves a CHECKSUM_PARTIAL packet. Returns (bytes, l4 offset)."""
    eth = bytes.fromhex("525400000002525400000001")
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    eth += struct.pack("!H", 0x86DD if v6 else 0x0800)
    proto = 17 if udp else 6
    if udp:
        l4 = struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0)
    else:
        o = b""
        while opts - len(o) >= 12:
            o += b"\x01\x01\x08\x0a" + struct.pack("!II", 0x01020304, 0x0A0B0C0D)
        o += b"\x01" * (opts - len(o))
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, (20 + len(o)) // 4 << 4, flags, 501, 0, 0) + o
    l4 += payload
    if v6:
        src = bytes.fromhex("fd000000000000000000000012345601")
        dst = bytes.fromhex("fd00000000000000abcd00009abcdef2")
        ip = struct.pack("!IHBB", 0x60012345, len(l4), proto, 64) + src + dst
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
    else:
        src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), ip_id, 0x4000, 64, proto, 0) + src + dst
        ip = ip[:10] + struct.pack("!H", ~csum(ip) & 0xFFFF) + ip[12:]
        pseudo = src + dst + struct.pack("!xBH", proto, len(l4))
    field = 6 if udp else 16
    l4 = l4[:field] + struct.pack("!H", csum(pseudo)) + l4[field + 2:]
    return eth + ip + l4, len(eth) + len(ip)


def hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, num_buffers=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)


def tx(features, caps, h, data, mtu=1500):
    return bytes([0]) + struct.pack("<QHB", features, mtu, caps) + h + data


def gso_tx(caps, gso_type, mss, **kw):
    data, l4 = frame(**kw)
    udp = kw.get("udp", False)
    h = hdr(NEEDS_CSUM, gso_type, 0, mss, l4, 6 if udp else 16)
    return tx(ALL_HOST, caps, h, data)


def ctrl(features, max_pairs, flags, commands):
    out = bytes([1]) + struct.pack("<QHB", features, max_pairs, flags)
    for c in commands:
        out += struct.pack("<H", len(c)) + c
    return out


def mac(m):
    return bytes.fromhex(m.replace(":", ""))


def mac_table(uni, multi):
    return (bytes([1, 0]) + struct.pack("<I", len(uni)) + b"".join(mac(m) for m in uni) +
            struct.pack("<I", len(multi)) + b"".join(mac(m) for m in multi))


def filt(mode, mode2, own, uni, multi, vids, data):
    out = bytes([2, mode, mode2]) + struct.pack("<Q", int(own.replace(":", ""), 16))[:6]
    out += bytes([len(uni), len(multi)])
    for m in uni + multi:
        out += struct.pack("<Q", int(m.replace(":", ""), 16))[:6]
    out += bytes([len(vids)]) + b"".join(struct.pack("<H", v) for v in vids)
    return out + data


ALL_CTRL = bits(CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR,
                CTRL_GUEST_OFFLOADS, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN)

seeds = {}
seeds["tso4_to_plain"] = gso_tx(0, GSO_TCPV4, 1448, payload=pattern(6000, 1), flags=0x18 | 0x01)
seeds["tso4_ecn_to_csum"] = gso_tx(C_CSUM | C_TSO4, GSO_TCPV4 | GSO_ECN, 1448, payload=pattern(5000, 2),
                                   flags=0x80 | 0x18)
seeds["tso6_to_plain"] = gso_tx(0, GSO_TCPV6, 1220, v6=True, payload=pattern(4000, 3), opts=32)
seeds["tso4_vlan_to_csum"] = gso_tx(C_CSUM, GSO_TCPV4, 1000, vlan=42, payload=pattern(3500, 4),
                                    seq=0xFFFFFF00, ip_id=0xFFFF)
seeds["tso4_passed_whole"] = gso_tx(C_CSUM | C_TSO4 | C_TSO6 | C_ECN, GSO_TCPV4, 1448, payload=pattern(3000, 5))
seeds["uso6_to_csum"] = gso_tx(C_CSUM, GSO_UDP_L4, 1400, v6=True, udp=True, payload=pattern(4000, 6))
data, l4 = frame(udp=True, payload=pattern(700, 7))
seeds["csum_udp4_to_plain"] = tx(bits(CSUM), 0, hdr(NEEDS_CSUM, 0, 0, 0, l4, 6), data)
data, l4 = frame(v6=True, payload=pattern(1000, 8), opts=0)
seeds["csum_tcp6_to_csum"] = tx(bits(CSUM), C_CSUM, hdr(NEEDS_CSUM, 0, 0, 0, l4, 16), data)
# gso_size 1 over 5000 bytes: more than 4096 segments (unchecked: adapted anyway).
seeds["tso4_tiny_mss"] = gso_tx(C_UNCHECKED, GSO_TCPV4, 1, payload=pattern(5000, 9))
data, l4 = frame(payload=pattern(100, 10))
seeds["tso4_cut_unchecked"] = tx(ALL_HOST, C_UNCHECKED, hdr(NEEDS_CSUM, GSO_TCPV4, 0, 50, l4, 16), data[:40])
seeds["tx_bad_flags"] = tx(ALL_HOST, 0, hdr(NEEDS_CSUM | DATA_VALID, 2, 0, 0, 0xFFFF, 0xFFFF, 1), data)

seeds["ctrl_every_class"] = ctrl(ALL_CTRL, 4, 2, [
    bytes([0, 0, 0]), bytes([0, 1, 1]), bytes([0, 2, 1]), bytes([0, 3, 0]), bytes([0, 4, 0]), bytes([0, 5, 1]),
    mac_table(["02:00:00:00:00:01", "0a:1b:2c:3d:4e:5f"], ["01:00:5e:00:00:01", "33:33:00:00:00:01"]),
    bytes([1, 1]) + mac("02:aa:bb:cc:dd:ee"),
    bytes([2, 0, 0x0A, 0]), bytes([2, 1, 0x0A, 0]), bytes([2, 0, 0xFF, 0x0F]),
    bytes([3, 0]),
    bytes([4, 0, 3, 0]), bytes([4, 0, 5, 0]),
    bytes([5, 0]) + struct.pack("<Q", bits(GUEST_CSUM, GUEST_TSO4)),
    bytes([5, 0]) + struct.pack("<Q", bits(GUEST_UFO)),
])
seeds["ctrl_mac_overflow"] = ctrl(ALL_CTRL, 1, 1, [
    mac_table(["02:00:00:00:%02x:%02x" % (i >> 8, i & 255) for i in range(65)], ["01:00:5e:00:00:07"]),
    mac_table([], ["01:00:5e:00:%02x:%02x" % (i >> 8, i & 255) for i in range(64)]),
    bytes([1, 0]) + struct.pack("<I", 1000) + mac("02:00:00:00:00:01"),
    bytes([1, 1]) + mac("02:00:00:00:00:09"),
])
seeds["ctrl_wrong_lengths"] = ctrl(bits(CTRL_VQ, CTRL_RX), 2, 0, [
    b"", b"\x00", bytes([0, 0]), bytes([0, 0, 2]), bytes([0, 2, 1]), bytes([2, 0, 1, 0]), bytes([4, 0, 1, 0]),
    bytes([9, 9, 9]), bytes([5, 0, 0, 0, 0, 0, 0, 0, 0]),
])

bcast_v4, _ = frame(payload=b"hello")
bcast_v4 = b"\xff" * 6 + bcast_v4[6:]
tagged, _ = frame(vlan=0x2005, udp=True, payload=b"tagged")
seeds["filter_strict_vlan"] = filt(64, 0, "52:54:00:00:00:02", ["02:00:00:00:00:03"], ["01:00:5e:00:00:01"],
                                   [5, 7], tagged)
seeds["filter_multicast"] = filt(2 | 32, 1, "52:54:00:00:00:09", [], ["01:00:5e:00:00:01"], [],
                                 bytes.fromhex("01005e000001") + bcast_v4[6:])
v6, _ = frame(v6=True, payload=b"flow")
seeds["hash_tcp6"] = filt(1, 0, "52:54:00:00:00:02", [], [], [], v6)

data, l4 = frame(v6=True, udp=True, payload=pattern(333, 11))
seeds["csum_udp6"] = bytes([3]) + hdr(NEEDS_CSUM, 0, 0, 0, l4, 6) + data
seeds["mac_text"] = bytes([3]) + hdr() + b"52:54:00:AB:cd:Ef"
seeds["garbage"] = pattern(300, 12)

os.makedirs(OUT, exist_ok=True)
for old in os.listdir(OUT):
    if old.startswith("seed-"):
        os.remove(os.path.join(OUT, old))
for name, blob in seeds.items():
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(blob)
print(f"{len(seeds)} seeds in {OUT}")
