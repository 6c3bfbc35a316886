#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates the seed corpus of fuzz_vsock (vsock_fuzzer.cc).

    python3 tests/fuzz/make_vsock_corpus.py      # rewrites corpus/vsock/seed-*

The input format is documented at the top of vsock_fuzzer.cc: a mode byte,
our buf_alloc and largest packet, then steps (0 raw guest packet, 1 packet
to the endpoint, 2 host data, 3 host consumed, 4 shutdown with flags from
bits 3-4: 10 SEND, 16 RECV, 28 both, 5 reset). The
seeds are conversations as a Linux guest's driver has them: a guest-opened
stream with credit updates and a clean close, a host-opened SEQPACKET
exchange, the raw packets a guest sends (good and hostile), and a guest
that ignores credit. Files named otherwise (regression inputs) are left
alone.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "vsock")

REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7
STREAM, SEQPACKET = 1, 2
F_SEQPACKET, F_NO_IMPLIED, F_STREAM, CONN_SEQ, HOST_OPENS = 1, 2, 4, 8, 16


def head(mode, buf_alloc, max_packet):
    return struct.pack("<BIH", mode, buf_alloc, max_packet)


def to_endpoint(op, flags=0, buf_alloc=65536, fwd_cnt=0, payload=b""):
    return bytes([1, op, flags]) + struct.pack("<IIH", buf_alloc, fwd_cnt, len(payload)) + payload


def raw(src, dst, sport, dport, length, typ, op, flags=0, buf_alloc=65536, fwd=0, chain=None, payload=b""):
    h = struct.pack("<QQIIIHHIII", src, dst, sport, dport, length, typ, op, flags, buf_alloc, fwd)
    assert len(h) == 44
    return bytes([0]) + h + struct.pack("<H", length if chain is None else chain) + payload


def host_data(data, eom=0):
    return bytes([2]) + struct.pack("<HB", len(data), eom) + data


def consumed(n):
    return bytes([3]) + struct.pack("<I", n)


def pattern(n, seed):
    return bytes((seed + 7 * i) & 0xff for i in range(n))


SEEDS = {
    "guest_stream_clean_close": head(0, 65536, 4096)
    + to_endpoint(RW, payload=pattern(100, 1))
    + consumed(100)
    + host_data(pattern(5000, 2))
    + to_endpoint(CREDIT_UPDATE, fwd_cnt=5000)
    + to_endpoint(CREDIT_REQUEST, fwd_cnt=5000)
    + to_endpoint(SHUTDOWN, flags=2, fwd_cnt=5000)
    + to_endpoint(SHUTDOWN, flags=1, fwd_cnt=5000),
    "host_seqpacket": head(F_SEQPACKET | CONN_SEQ | HOST_OPENS, 8192, 4096)
    + to_endpoint(RESPONSE, buf_alloc=16384)
    + host_data(pattern(10000, 3), eom=1)
    + host_data(b"", eom=1)
    + to_endpoint(RW, flags=1, buf_alloc=16384, fwd_cnt=10000, payload=pattern(50, 4))
    + consumed(50)
    + bytes([10])  # shutdown SEND (a half-close)
    + to_endpoint(SHUTDOWN, flags=3, buf_alloc=16384, fwd_cnt=10000),
    "raw_packets": head(F_SEQPACKET, 65536, 0)
    + raw(3, 2, 50000, 1234, 64, STREAM, RW, payload=pattern(64, 5))
    + raw(4, 2, 50000, 1234, 0, STREAM, REQUEST)
    + raw(3, 3, 50000, 1234, 0, STREAM, REQUEST)
    + raw(3, 0xffffffff, 50000, 1234, 0, STREAM, REQUEST)
    + raw(3, 2, 50000, 1234, 0, 3, REQUEST)
    + raw(3, 2, 50000, 1234, 0, STREAM, 9)
    + raw(3, 2, 50000, 1234, 100, STREAM, RW, chain=10, payload=pattern(10, 6))
    + raw(3, 2, 50000, 1234, 8, STREAM, CREDIT_UPDATE, payload=pattern(8, 7))
    + raw(3, 2, 50000, 1234, 0, SEQPACKET, RW),
    "credit_ignored": head(0, 1000, 0)
    + to_endpoint(RW, payload=pattern(900, 8))
    + to_endpoint(RW, payload=pattern(200, 9))
    + to_endpoint(RW, payload=pattern(10, 10)),
    "host_close_then_data": head(0, 65536, 1024)
    + to_endpoint(RW, payload=pattern(300, 11))
    + bytes([28])  # shutdown both
    + to_endpoint(RW, payload=pattern(300, 12))
    + consumed(600)
    + to_endpoint(RST)
    + host_data(pattern(10, 13))
    + bytes([5]),
    # Mode bit 5: CONNECT lines in pieces, as socat or a host agent sends them.
    "connect_line": bytes([0x20]) + bytes([5]) + b"CONNE" + bytes([12]) + b"CT 1234\nDATA",
    "connect_line_crlf": bytes([0x20]) + bytes([14]) + b"connect 52\r\nxy",
    "connect_line_bad": bytes([0x20]) + bytes([20]) + b"CONNECT -1\n" + b"CONNECT 99999999999\n",
    "connect_line_long": bytes([0x20]) + bytes([64]) + b"CONNECT " + b"0" * 56,
    # Mode bit 6: a stream's small packets and others through an inbox.
    "inbox_merge": bytes([0x40])
    + bytes([0x10, 0, 0, 1]) + pattern(8, 14)
    + bytes([0x10, 0, 0, 2]) + pattern(16, 15)
    + bytes([0x11, 0, 0, 1]) + pattern(8, 16)
    + bytes([0x10, 1, 1, 1]) + pattern(8, 17)
    + bytes([0x10, 4, 0x30, 1]) + pattern(8, 18)
    + bytes([0x10, 0, 0, 255]) + pattern(2040, 19)
    + bytes([0x20, 2, 0, 0]),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.startswith("seed-"):
            os.remove(os.path.join(OUT, name))
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
