#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vioguest to vioguest through vios's switch, over each transport: for each
# of shm, vhost-user, crq (crqd) and xen (xenemud), a fresh vios with two
# net devices on one switch, both attached over that transport, and two
# vioguest processes: `net bench --mode tx` on one, `--mode rx` on the
# other. Workloads per transport, each run for --secs:
#   64 B        packets per second: offered (the sender unpaced) and
#               received, then the lossless rate (RFC 2544's throughput:
#               the highest paced rate with at most 0.1% lost, by bisection
#               in --steps runs)
#   1500 B      Gbit/s received, the sender unpaced
#   TSO         Gbit/s received, 63000-byte TCP frames passed whole (both
#               guests negotiated TSO: no segmentation on the way)
#   latency     64 B at --rate frames/s: one-way latency p50/p99 (us),
#               stamped by the sender, timed by the receiver
# Baselines from the same run: the shm column (the zero-copy transport) for
# the ratios, and the machine's memcpy bandwidth (vioport_memcpy, before
# and after) as the ceiling of any byte-moving path. Three busy processes
# (vios, two vioguests) share this machine's cores; none is pinned.
#   --secs N     seconds per workload (default 4)
#   --rate PPS   frames/s for the latency workload (default 20000)
#   --steps N    bisection runs for the lossless rate (default 6)
#   --only T     one transport (shm, vhost-user, crq, xen)
#   --build DIR  build directory (default build/release)
# docs/performance.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=4
RATE=20000
STEPS=6
ONLY=""
BUILD=build/release
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    *) echo "bench-net-switch.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  scripts/configure.sh "$BUILD"
fi
cmake --build "$BUILD" --target vios viosctl vioguest crqd xenemud vioport_memcpy >/dev/null
VIOGUEST=$BUILD/guest/tool/vioguest
VIOS=$BUILD/vios/vios
VIOSCTL=$BUILD/vios/viosctl
CRQD=$BUILD/emulators/crq/crqd
XENEMUD=$BUILD/emulators/xen/xenemud
MEMCPY=$BUILD/tests/vioport_memcpy

work=$(mktemp -d /dev/shm/vioport-net-switch.XXXXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

# start T: the channel emulator T needs, then vios with n0 and n1 on sw0;
# sets G0 and G1 to the guests' --transport values.
start() {
  local t=$1 a0 a1
  rm -rf "$work"/*
  MEM=64
  case "$t" in
    shm) a0="path=$work/n0.sock"; a1="path=$work/n1.sock"; G0="shm:$work/n0.sock"; G1="shm:$work/n1.sock" ;;
    vhost-user) a0="socket=$work/n0.sock"; a1="socket=$work/n1.sock"
      G0="vhost-user:$work/n0.sock"; G1="vhost-user:$work/n1.sock" ;;
    crq)
      "$CRQD" --socket "$work/crqd.sock" --control "$work/crqd.ctl" \
        --pair client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:1 \
        --pair client=3:0x1001:0x1001:64,server=2:0x2001:0x2001:1 2>"$work/crqd.log" &
      pids+=($!)
      wait_socket "$work/crqd.sock" || { echo "bench-net-switch.sh: crqd did not start" >&2; exit 1; }
      a0="crqd=$work/crqd.sock,partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64"
      a1="crqd=$work/crqd.sock,partition=2,unit=0x2001,liobn=0x2001,remote-liobn=0x1001,remote-window-mib=64"
      G0="crq:$work/crqd.sock,partition=1,unit=0x1000,liobn=0x1000"
      G1="crq:$work/crqd.sock,partition=3,unit=0x1001,liobn=0x1001" ;;
    xen)
      "$XENEMUD" --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xen.log" &
      pids+=($!)
      wait_socket "$work/xen.sock" || { echo "bench-net-switch.sh: xenemud did not start" >&2; exit 1; }
      MEM=32  # two guests within xenemud's grant pool
      a0="channel=emu:$work/xen.sock,domid=1"; a1="channel=emu:$work/xen.sock,domid=2"
      G0="xen:emu:$work/xen.sock,domid=1"; G1="xen:emu:$work/xen.sock,domid=2" ;;
  esac
  "$VIOS" --netdev switch,id=sw0 \
    --device net,id=n0,switch=sw0,mac=52:54:00:00:00:01 --device net,id=n1,switch=sw0,mac=52:54:00:00:00:02 \
    --attach "n0,transport=$t,$a0" --attach "n1,transport=$t,$a1" \
    --control "$work/vios.ctl" --log-level warning 2>"$work/vios.log" &
  pids+=($!)
  wait_socket "$work/vios.ctl" || { echo "bench-net-switch.sh: vios did not start: $(tail -2 "$work/vios.log")" >&2; exit 1; }
}

# run ARGS...: a receiver on n1 and a sender on n0 with `net bench ARGS`;
# prints the receiver's result line.
run() {
  "$VIOGUEST" --quiet --memory "$MEM" --transport "$G1" net bench --mode rx --time $((SECS + 3)) "$@" \
    >"$work/rx.out" 2>"$work/rx.err" &
  local rx=$!
  sleep 1
  "$VIOGUEST" --quiet --memory "$MEM" --transport "$G0" net bench --mode tx --time "$SECS" "$@" \
    >"$work/tx.out" 2>"$work/tx.err" || { echo "bench-net-switch.sh: sender failed: $(tail -1 "$work/tx.err")" >&2; exit 1; }
  wait "$rx" || { echo "bench-net-switch.sh: receiver failed: $(tail -1 "$work/rx.err")" >&2; exit 1; }
  grep '^result device=net op=bench-rx' "$work/rx.out"
}

# lossless MAX: the highest rate (frames/s, below MAX: twice what the receiver
# took under overload, or the offered rate) at which the receiver
# got at least 99.9% of what the sender sent, 64 B frames.
lossless() {
  local lo=0 hi=$1 mid r tx rx
  for _ in $(seq "$STEPS"); do
    mid=$(((lo + hi) / 2))
    r=$(run --size 64 --rate "$mid")
    rx=$(field frames <<<"$r"); tx=$(field frames <"$work/tx.out")
    if ((rx * 1000 >= tx * 999)); then lo=$mid; else hi=$mid; fi
  done
  echo "$lo"
}

TRANSPORTS=(shm vhost-user crq xen)
[[ -n "$ONLY" ]] && TRANSPORTS=("$ONLY")
declare -A PPS GB15 GBTSO P50 P99 TXPPS LOSSLESS
memcpy_before=$("$MEMCPY" --seconds 1 | field mbps)
for t in "${TRANSPORTS[@]}"; do
  start "$t"
  r=$(run --size 64); PPS[$t]=$(field pps <<<"$r"); TXPPS[$t]=$(field pps <"$work/tx.out")
  hi=$((2 * ${PPS[$t]%.*})); ((hi < ${TXPPS[$t]%.*})) || hi=${TXPPS[$t]%.*}
  LOSSLESS[$t]=$(lossless "$hi")
  r=$(run --size 1500); GB15[$t]=$(field gbps <<<"$r")
  r=$(run --tso); GBTSO[$t]=$(field gbps <<<"$r")
  r=$(run --size 64 --rate "$RATE"); P50[$t]=$(field p50_us <<<"$r"); P99[$t]=$(field p99_us <<<"$r")
  [[ $(stat n1 rx_gso_frames) -gt 0 ]] || { echo "bench-net-switch.sh: $t: no TSO frame arrived whole" >&2; exit 1; }
  stop_all
done
memcpy_after=$("$MEMCPY" --seconds 1 | field mbps)
limit=$(awk -v a="$memcpy_before" -v b="$memcpy_after" 'BEGIN { printf "%.1f", (a + b) / 2 * 8 / 1000 }')

echo "vioguest -> vios switch -> vioguest, one queue pair, split rings, ${SECS} s per workload"
echo "memcpy (same run): ${memcpy_before} / ${memcpy_after} MB/s before / after = ${limit} Gbit/s"
printf '%-10s | %8s %8s %8s | %10s %10s | %8s %8s | %8s %8s | %6s %6s\n' transport "offered" "received" \
  "lossless" "1500B Gb/s" "TSO Gb/s" "p50 us" "p99 us" "vs shm" "(TSO)" "/memcpy" "(TSO)"
for t in "${TRANSPORTS[@]}"; do
  s=${TRANSPORTS[0]}
  awk -v t="$t" -v p="${PPS[$t]}" -v tp="${TXPPS[$t]}" -v ll="${LOSSLESS[$t]}" -v g="${GB15[$t]}" \
    -v gt="${GBTSO[$t]}" -v a="${P50[$t]}" -v b="${P99[$t]}" -v sll="${LOSSLESS[$s]}" -v sg="${GBTSO[$s]}" \
    -v lim="$limit" 'BEGIN {
    printf "%-10s | %8.2f %8.2f %8.2f | %10.2f %10.2f | %8.1f %8.1f | %8.2f %8.2f | %6.2f %6.2f\n",
      t, tp / 1e6, p / 1e6, ll / 1e6, g, gt, a, b, ll / sll, gt / sg, g / lim, gt / lim }'
done
echo "(64 B in Mpps: offered by the unpaced sender, received, lossless; vs shm: the lossless rate and TSO Gbit/s" \
  "against the first transport's; /memcpy: Gbit/s against the memcpy limit; one-way latency at ${RATE} frames/s)"
