#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vios at scale: N blk devices in one vios from one TOML file (half over
# shm, half over vhost-user), then G guests (vioguest processes) at once on
# the first G devices, each writing and verifying its own data and running a
# 4 KiB random-read benchmark. The baseline, in the same run and the same
# vios: one guest alone on one device.
#   --devices N   devices (default: 10000, or what RLIMIT_NOFILE allows at 2 each)
#   --guests G    guests at once (default 100)
#   --threads R   vios reactors (default: the number of CPUs)
#   --secs S      seconds of benchmark (default 5)
#   --qd Q        queue depth per guest (default 4)
# Prints start-up time, descriptors and resident memory per idle device, idle
# CPU, IOPS alone and together (and their ratio), IOPS per reactor, and how
# many guests verified their data. docs/performance.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
HARD=$(ulimit -Hn)
DEVICES=$(( (HARD - 1000) / 2 ))
(( DEVICES > 10000 )) && DEVICES=10000
GUESTS=100
THREADS=$(nproc)
SECS=5
QD=4
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --devices) DEVICES="$2"; shift 2 ;;
    --guests) GUESTS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --qd) QD="$2"; shift 2 ;;
    *) echo "bench-scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
(( GUESTS <= DEVICES )) || { echo "bench-scale.sh: more guests than devices" >&2; exit 2; }
scripts/configure.sh build/release
cmake --build build/release --target vios viosctl vioguest >/dev/null
BIN=$(realpath build/release)
work=$(mktemp -d /dev/shm/vioport-scale.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$HARD"

truncate -s 1M "$work/idle.img"
python3 - "$work" "$DEVICES" "$GUESTS" <<'EOF'
import os, sys
work, n, g = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f"{work}/vios.toml", "w") as f:
    for i in range(n):
        img = f"{work}/g{i}.img" if i < g else f"{work}/idle.img"
        if i < g:
            with open(img, "wb") as d:
                d.truncate(16 << 20)
        t, key = ("shm", "path") if i % 2 == 0 else ("vhost-user", "socket")
        f.write(f'[[device]]\ntype = "blk"\nid = "d{i}"\npath = "{img}"\n'
                f'[[attach]]\ndevice = "d{i}"\ntransport = "{t}"\n{key} = "{work}/d{i}.sock"\n')
open(f"{work}/empty.toml", "w").close()
EOF

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# start_vios TOML: starts vios, waits for "vios ready"; sets pid and ready_s.
start_vios() {
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN/vios/vios" --threads "$THREADS" --config "$1" --control "$work/vios.ctl" --log-level info \
    2>"$work/vios.log" &
  pid=$!
  until grep -q "vios ready" "$work/vios.log"; do
    kill -0 "$pid" 2>/dev/null || { tail -5 "$work/vios.log"; exit 1; }
    sleep 0.005
  done
  t1=$(date +%s.%N)
  ready_s=$(echo "$t1 - $t0" | bc)
}
start_vios "$work/empty.toml"
sleep 0.5
base_fds=$(ls "/proc/$pid/fd" | wc -l); base_rss=$(rss "$pid")
kill "$pid"; wait "$pid" || true; pid=""

start_vios "$work/vios.toml"
sleep 1
fds=$(ls "/proc/$pid/fd" | wc -l); kib=$(rss "$pid")
t0=$(ticks "$pid"); sleep 3; idle_ticks=$(( $(ticks "$pid") - t0 ))
guest() {  # guest I ARGS...: vioguest on device I
  local i=$1; shift
  local t=shm; (( i % 2 == 1 )) && t=vhost-user
  "$BIN/guest/tool/vioguest" --quiet --memory 64 --transport "$t:$work/d$i.sock" "$@"
}
# Baseline: one guest alone.
guest 0 blk write --seed 1000 --length 16M >/dev/null
alone=$(guest 0 blk bench --pattern randread --bs 4K --qd "$QD" --time "$SECS" | grep '^result device=blk' |
  sed -n 's/.* iops=\([0-9.]*\).*/\1/p')
# All guests at once: write, benchmark, verify.
for i in $(seq 0 $((GUESTS - 1))); do
  ( guest "$i" blk write --seed "$i" --length 16M >"$work/w$i.out" 2>&1 &&
    guest "$i" blk bench --pattern randread --bs 4K --qd "$QD" --time "$SECS" >"$work/b$i.out" 2>&1 &&
    guest "$i" blk verify --seed "$i" --length 16M >"$work/v$i.out" 2>&1 ) &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
"$BIN/vios/viosctl" --control "$work/vios.ctl" --json call device_list >"$work/list.json"
python3 - "$work" "$GUESTS" "$DEVICES" "$ready_s" "$fds" "$base_fds" "$kib" "$base_rss" "$idle_ticks" "$alone" \
  "$THREADS" <<'EOF'
import json, re, sys
work, g, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ready, fds, bfds, kib, bkib, idle, alone, threads = sys.argv[4:12]
devices = {d["id"]: d for d in json.load(open(f"{work}/list.json"))["result"]}
per_reactor, total, verified = {}, 0.0, 0
for i in range(g):
    b = open(f"{work}/b{i}.out").read()
    m = re.search(r"result device=blk .* iops=([0-9.]+)", b)
    iops = float(m.group(1)) if m else 0.0
    total += iops
    r = devices.get(f"d{i}", {}).get("reactor", "-")
    per_reactor[r] = per_reactor.get(r, 0.0) + iops
    verified += "verified=yes" in open(f"{work}/v{i}.out").read()
print(f"devices {n} (shm and vhost-user), reactors {threads}: ready in {float(ready):.2f} s")
print(f"idle device: {(int(fds) - int(bfds)) / n:.2f} fds, {(int(kib) - int(bkib)) / n:.1f} KiB resident; "
      f"idle vios CPU: {idle} ticks in 3 s")
print(f"one guest alone: {float(alone):.0f} IOPS (4K randread)")
print(f"{g} guests at once: {total:.0f} IOPS in all ({total / float(alone):.2f}x alone); "
      f"data verified by {verified} of {g}")
for r in sorted(per_reactor, key=str):
    print(f"  reactor {r}: {per_reactor[r]:.0f} IOPS")
EOF
