#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz_xenstore (tests/fuzz/corpus/xenstore).

Input format (see xenstore_fuzzer.cc): byte 0 picks the domain identity
(domid 1 + b % 8), then a stream of xsd_sockmsg messages (host byte order,
little-endian here); even req_id -> dom0 connection, odd -> the domain.
"""
import os
import struct
import sys

(CONTROL, DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END, INTRODUCE, RELEASE,
 GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR, IS_DOMAIN_INTRODUCED,
 RESUME, SET_TARGET) = range(20)
RESET_WATCHES, DIRECTORY_PART = 21, 22


def msg(t, req, payload=b"", tx=0, length=None):
    return struct.pack("<IIII", t, req, tx, len(payload) if length is None else length) + payload


def z(*strings):
    return b"".join(s.encode() + b"\0" for s in strings)


SEEDS = {
    "basic_dom0": [msg(WRITE, 2, b"/a/b\0hello"), msg(READ, 4, z("/a/b")), msg(DIRECTORY, 6, z("/a")),
                   msg(GET_PERMS, 8, z("/a/b")), msg(MKDIR, 10, z("/a/c")), msg(RM, 12, z("/a")),
                   msg(RM, 14, z("/"))],
    "domain_relative": [msg(WRITE, 1, b"data/x\0v"), msg(READ, 3, z("data/x")),
                        msg(GET_DOMAIN_PATH, 5, z("5")), msg(READ, 7, z("/local/domain/1/x"))],
    "perms": [msg(WRITE, 2, b"/s/x\0v"), msg(SET_PERMS, 4, z("/s/x", "n0", "r5", "w6")),
              msg(READ, 1, z("/s/x")), msg(WRITE, 3, b"/s/x\0w"), msg(SET_PERMS, 5, z("data", "n5")),
              msg(SET_PERMS, 7, z("/s/x", "q9"))],
    "watch": [msg(WATCH, 2, z("/w", "t")), msg(WATCH, 2, z("/w", "t")), msg(WRITE, 4, b"/w/x\0"),
              msg(WATCH, 1, z("rel", "r")), msg(WRITE, 3, b"rel/a\0b"), msg(UNWATCH, 6, z("/w", "t")),
              msg(UNWATCH, 8, z("/w", "t")), msg(WATCH, 10, z("@introduceDomain", "i")),
              msg(INTRODUCE, 12, z("7", "1", "2")), msg(RELEASE, 14, z("7")), msg(RESET_WATCHES, 16)],
    "transaction": [msg(TX_START, 2, b"\0"), msg(WRITE, 4, b"/t/a\0x", tx=1), msg(READ, 6, z("/t/a"), tx=1),
                    msg(WRITE, 8, b"/t/a\0y"), msg(TX_END, 10, z("T"), tx=1), msg(TX_START, 12, b"\0"),
                    msg(TX_START, 14, b"\0", tx=2), msg(TX_END, 16, z("F"), tx=2), msg(TX_END, 18, z("T"), tx=9)],
    "domain_tx_limit": [msg(TX_START, r, b"\0") for r in range(1, 13, 2)] + [msg(TX_END, 13, z("X"), tx=1)],
    "directory_part": [msg(WRITE, 2 * i + 2, ("/d/child%04d\0" % i).encode()) for i in range(40)] +
                      [msg(DIRECTORY_PART, 100, z("/d", "0")), msg(DIRECTORY_PART, 102, z("/d", "200")),
                       msg(DIRECTORY_PART, 104, z("/d"))],
    "garbage": [msg(999, 2, b"x"), msg(WATCH_EVENT, 4, z("a", "b")), msg(READ, 6, b"/unterminated"),
                msg(READ, 8, b""), msg(WRITE, 10, b"nonul"), msg(CONTROL, 1, z("x")), msg(20, 12),
                msg(READ, 14, z("/a//b")), msg(WRITE, 16, b"/bad path\0v")],
    "oversized": [msg(READ, 2, z("/")), msg(WRITE, 4, b"", length=4097), msg(READ, 6, z("/"))],
    "quota": [msg(WRITE, 2 * i + 1, ("n%d\0" % i).encode()) for i in range(70)],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "xenstore")
    os.makedirs(out, exist_ok=True)
    for i, (name, msgs) in enumerate(sorted(SEEDS.items())):
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([4 if "domain" in name or name == "quota" else i]) + b"".join(msgs))
    print("wrote %d seeds to %s" % (len(SEEDS), out))


if __name__ == "__main__":
    main()
