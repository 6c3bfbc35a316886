#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Seeds for fuzz_options (options_fuzzer.cc): byte 0 picks a registered
# transport (device halves in registration order - shm, vhost-user, crq,
# xen - then guest halves), the rest is "first,KEY=VALUE,...".
# Writes tests/fuzz/corpus/options/.
import os

seeds = {
    "shm_good": (0, "d0,path=/run/d0.sock,poll=on,spin-us=0x14"),
    "shm_unknown_key": (0, "d0,path=/x,colour=red"),
    "shm_bad_bool": (0, "d0,path=/x,poll=maybe"),
    "vhost_user_good": (1, "d0,socket=/run/v.sock,inflight=off,spin-us=1000"),
    "vhost_user_range": (1, "d0,socket=/x,spin-us=1001"),
    "crq_good": (2, "d0,crqd=/run/crqd.sock,partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64"),
    "crq_missing": (2, "d0,crqd=/x,partition=2"),
    "crq_suffixes": (2, "d0,crqd=/x,partition=2,unit=1,liobn=1,remote-liobn=2,remote-window-mib=1K,max-transfer=64K"),
    "xen_good": (3, "d0,channel=emu:/run/xen.sock,domid=1,grants=copy,cache-pages=0"),
    "xen_bad_choice": (3, "d0,channel=xen,domid=1,grants=maybe"),
    "xen_overflow": (3, "d0,channel=xen,domid=18446744073709551616"),
    "guest_crq": (6, "/run/crqd.sock,partition=1,unit=0x1000,liobn=0x1000,window-mib=16G"),
    "guest_xen": (7, "emu:/run/xen.sock,domid=1,devid=0"),
    "split_garbage": (0, "=x,,a=,=b,dup=1,dup=2"),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "options")
os.makedirs(out, exist_ok=True)
for name, (pick, text) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([pick]) + text.encode())
print(f"{len(seeds)} seeds in {out}")
