#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vios at scale: N blk devices in one vios from one TOML file, then G guests
# (vioguest processes) at once on the first G devices, each writing and
# verifying its own data and running a 4 KiB random-read benchmark. The
# guests' devices take the transports of --mix in turn (crq through the
# crqd emulator, Xen through xenemud); the idle ones alternate shm and
# vhost-user. The baseline, in the same run and the same vios: one guest
# alone on one device (over shm).
#   --devices N   devices (default: 10000, or what RLIMIT_NOFILE allows at 2 each)
#   --guests G    guests at once (default 100)
#   --threads R   vios reactors (default: the number of CPUs)
#   --secs S      seconds of benchmark (default 5)
#   --qd Q        queue depth per guest (default 4)
#   --mix LIST    the guests' transports, in turn (default shm,vhost-user,crq,xen)
#   --keep        keep the work directory (logs, outputs) and print its path
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
MIX=shm,vhost-user,crq,xen
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --devices) DEVICES="$2"; shift 2 ;;
    --guests) GUESTS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --secs) SECS="$2"; shift 2 ;;
    --qd) QD="$2"; shift 2 ;;
    --mix) MIX="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "bench-scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
(( GUESTS <= DEVICES )) || { echo "bench-scale.sh: more guests than devices" >&2; exit 2; }
scripts/configure.sh build/release
cmake --build build/release --target vios viosctl vioguest crqd xenemud >/dev/null
BIN=$(realpath build/release)
work=$(mktemp -d /dev/shm/vioport-scale.XXXXXX)
pid=""
emus=()
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
  for e in "${emus[@]}"; do kill "$e" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if (( KEEP )); then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
ulimit -n "$HARD"

truncate -s 1M "$work/idle.img"
# Writes vios.toml, the guests' --transport specs (g<i>.spec) and crqd's
# adapter pairs (crqd.pairs): crq guest k is client partition 1+2k on unit
# 0x1000+k and vios's adapter unit 0x2000+k of its partition 1000; Xen guest
# k is domain 1+k.
python3 - "$work" "$DEVICES" "$GUESTS" "$MIX" <<'EOF'
import sys
work, n, g, mix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
pairs, crq, xen = [], 0, 0
with open(f"{work}/vios.toml", "w") as f:
    for i in range(n):
        img = f"{work}/g{i}.img" if i < g else f"{work}/idle.img"
        t = mix[i % len(mix)] if i < g else ("shm" if i % 2 == 0 else "vhost-user")
        if i < g:
            with open(img, "wb") as d:
                d.truncate(16 << 20)
        f.write(f'[[device]]\ntype = "blk"\nid = "d{i}"\npath = "{img}"\n'
                f'[[attach]]\ndevice = "d{i}"\ntransport = "{t}"\n')
        if t == "shm":
            f.write(f'path = "{work}/d{i}.sock"\n')
            spec = f"shm:{work}/d{i}.sock"
        elif t == "vhost-user":
            f.write(f'socket = "{work}/d{i}.sock"\n')
            spec = f"vhost-user:{work}/d{i}.sock"
        elif t == "crq":
            k = crq
            crq += 1
            c, u, s = 1 + 2 * k, 0x1000 + k, 0x2000 + k
            pairs.append(f"client={c}:{u:#x}:{u:#x}:64,server=1000:{s:#x}:{s:#x}:1")
            f.write(f'crqd = "{work}/crqd.sock"\npartition = 1000\nmemory-mib = 256\nunit = {s}\n'
                    f'liobn = {s}\nremote-liobn = {u}\nremote-window-mib = 64\n')
            spec = f"crq:{work}/crqd.sock,partition={c},unit={u:#x},liobn={u:#x}"
        elif t == "xen":
            xen += 1
            f.write(f'channel = "emu:{work}/xen.sock"\ndomid = {xen}\n')
            spec = f"xen:emu:{work}/xen.sock,domid={xen}"
        else:
            sys.exit(f"bench-scale.sh: --mix: unknown transport {t}")
        if i < g:
            open(f"{work}/g{i}.spec", "w").write(spec)
            # xenemud's grant pool is about 74 MiB for all domains: 2 MiB each.
            open(f"{work}/g{i}.mem", "w").write("2" if t == "xen" else "64")
open(f"{work}/crqd.pairs", "w").write(" ".join(pairs))
open(f"{work}/empty.toml", "w").close()
EOF
if [[ -s "$work/crqd.pairs" ]]; then
  pairs=()
  for p in $(cat "$work/crqd.pairs"); do pairs+=(--pair "$p"); done
  "$BIN/emulators/crq/crqd" --socket "$work/crqd.sock" --control "$work/crqd.ctl" "${pairs[@]}" \
    2>"$work/crqd.log" &
  emus+=($!)
  for _ in $(seq 200); do [[ -S "$work/crqd.sock" ]] && break; sleep 0.025; done
fi
if grep -q '^channel = "emu:' "$work/vios.toml"; then
  "$BIN/emulators/xen/xenemud" --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xenemud.log" &
  emus+=($!)
  for _ in $(seq 200); do [[ -S "$work/xen.sock" ]] && break; sleep 0.025; done
fi

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
guest() {  # guest I ARGS...: vioguest on device I, over its transport
  local i=$1; shift
  "$BIN/guest/tool/vioguest" --quiet --memory "$(cat "$work/g$i.mem")" --transport "$(cat "$work/g$i.spec")" "$@"
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
guest_jobs=$(jobs -p | grep -v -x -F -e "$pid" $(printf -- '-e %s ' "${emus[@]}") || true)
wait $guest_jobs 2>/dev/null || true
"$BIN/vios/viosctl" --control "$work/vios.ctl" --json call device_list >"$work/list.json"
python3 - "$work" "$GUESTS" "$DEVICES" "$ready_s" "$fds" "$base_fds" "$kib" "$base_rss" "$idle_ticks" "$alone" \
  "$THREADS" <<'EOF'
import json, re, sys
work, g, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ready, fds, bfds, kib, bkib, idle, alone, threads = sys.argv[4:12]
devices = {d["id"]: d for d in json.load(open(f"{work}/list.json"))["result"]}
per_reactor, per_transport, total, verified = {}, {}, 0.0, 0
def read(name):
    try:
        return open(f"{work}/{name}").read()
    except OSError:
        return ""
failed = []
for i in range(g):
    b = read(f"b{i}.out")
    if "result device=blk" not in b:
        failed.append(f"d{i}: " + (read(f"w{i}.out") + b).strip().splitlines()[-1:][0] if (read(f"w{i}.out") + b).strip() else f"d{i}: no output")
    m = re.search(r"result device=blk .* iops=([0-9.]+)", b)
    iops = float(m.group(1)) if m else 0.0
    total += iops
    r = devices.get(f"d{i}", {}).get("reactor", "-")
    per_reactor[r] = per_reactor.get(r, 0.0) + iops
    t = devices.get(f"d{i}", {}).get("transport", "-")
    ok = "verified=yes" in read(f"v{i}.out")
    n_t, iops_t, ok_t = per_transport.get(t, (0, 0.0, 0))
    per_transport[t] = (n_t + 1, iops_t + iops, ok_t + ok)
    verified += ok
print(f"devices {n}, reactors {threads}: ready in {float(ready):.2f} s")
print(f"idle device: {(int(fds) - int(bfds)) / n:.2f} fds, {(int(kib) - int(bkib)) / n:.1f} KiB resident; "
      f"idle vios CPU: {idle} ticks in 3 s")
print(f"one guest alone: {float(alone):.0f} IOPS (4K randread)")
print(f"{g} guests at once: {total:.0f} IOPS in all ({total / float(alone):.2f}x alone); "
      f"data verified by {verified} of {g}")
for r in sorted(per_reactor, key=str):
    print(f"  reactor {r}: {per_reactor[r]:.0f} IOPS")
for f in failed:
    print(f"  failed: {f}")
for t in sorted(per_transport):
    n_t, iops_t, ok_t = per_transport[t]
    print(f"  {t}: {n_t} guests, {iops_t:.0f} IOPS, {ok_t} verified")
EOF
