#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# TCP throughput (iperf3) from a network namespace through vios's tap uplink
# and switch to a vioguest, and back, against the same iperf3 over a veth
# pair in the same run. Needs root (namespaces, tap).
#
#   namespace A: vios (its tap uplink vbt-up, 10.77.0.1) and iperf3 -c
#   namespace B: vioguest net tap (device n0 over --transport, its tap
#                vbt-g, 10.77.0.2) and iperf3 -s
#   A -> B: iperf3 -c; B -> A: iperf3 -c -R
#   baseline: namespaces C and D joined by a veth pair (10.78.0.1/2)
#
# Each TCP segment crosses: kernel (A) -> tap -> vios's uplink -> switch ->
# n0 -> the transport -> vioguest's driver -> tap -> kernel (B); offloads
# (CSUM, TSO) pass through whole where both ends took them.
#   --secs N            seconds per iperf3 run (default 5)
#   --rounds N          alternations (default 2; the median is reported)
#   --transport T       shm (default), vhost-user, crq or xen
#   --build DIR         build directory (default build/release)
# docs/performance.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=5
ROUNDS=2
T=shm
BUILD=build/release
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --transport) T="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    *) echo "bench-net-tcp.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "bench-net-tcp.sh: needs root (network namespaces, tap)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench-net-tcp.sh: iperf3 missing (scripts/install-deps.sh)" >&2; exit 1; }
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  scripts/configure.sh "$BUILD"
fi
cmake --build "$BUILD" --target vios viosctl vioguest crqd xenemud >/dev/null
VIOGUEST=$(realpath "$BUILD/guest/tool/vioguest")
VIOS=$(realpath "$BUILD/vios/vios")
VIOSCTL=$(realpath "$BUILD/vios/viosctl")
CRQD=$(realpath "$BUILD/emulators/crq/crqd")
XENEMUD=$(realpath "$BUILD/emulators/xen/xenemud")

work=$(mktemp -d /dev/shm/vioport-net-tcp.XXXXXX)
NS=(vbt$$a vbt$$b vbt$$c vbt$$d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for n in "${NS[@]}"; do ip netns add "$n"; ip -n "$n" link set lo up; done
A=${NS[0]} B=${NS[1]} C=${NS[2]} D=${NS[3]}

# The veth baseline.
ip link add vbt-va netns "$C" type veth peer name vbt-vb netns "$D"
ip -n "$C" addr add 10.78.0.1/24 dev vbt-va; ip -n "$C" link set vbt-va up
ip -n "$D" addr add 10.78.0.2/24 dev vbt-vb; ip -n "$D" link set vbt-vb up

# vios in A with its uplink, n0 over the transport; vioguest in B.
case "$T" in
  shm) att="path=$work/n0.sock"; G="shm:$work/n0.sock" ;;
  vhost-user) att="socket=$work/n0.sock"; G="vhost-user:$work/n0.sock" ;;
  crq)
    "$CRQD" --socket "$work/crqd.sock" --control "$work/crqd.ctl" \
      --pair client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:1 2>"$work/crqd.log" &
    pids+=($!); wait_socket "$work/crqd.sock"
    att="crqd=$work/crqd.sock,partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64"
    G="crq:$work/crqd.sock,partition=1,unit=0x1000,liobn=0x1000" ;;
  xen)
    "$XENEMUD" --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xen.log" &
    pids+=($!); wait_socket "$work/xen.sock"
    att="channel=emu:$work/xen.sock,domid=1"; G="xen:emu:$work/xen.sock,domid=1" ;;
  *) echo "bench-net-tcp.sh: unknown transport $T" >&2; exit 2 ;;
esac
ip netns exec "$A" "$VIOS" --netdev switch,id=sw0 --netdev tap,id=up0,ifname=vbt-up,switch=sw0 \
  --device net,id=n0,switch=sw0,mac=52:54:00:00:0b:02 --attach "n0,transport=$T,$att" \
  --control "$work/vios.ctl" --log-level warning 2>"$work/vios.log" &
pids+=($!)
wait_socket "$work/vios.ctl" || { echo "bench-net-tcp.sh: vios did not start: $(tail -2 "$work/vios.log")" >&2; exit 1; }
ip -n "$A" addr add 10.77.0.1/24 dev vbt-up; ip -n "$A" link set vbt-up up
ip netns exec "$B" "$VIOGUEST" --quiet --memory 64 --transport "$G" net tap --ifname vbt-g >"$work/tap.out" 2>"$work/tap.err" &
pids+=($!)
for _ in $(seq 200); do grep -q "joined to the device" "$work/tap.err" 2>/dev/null && break; sleep 0.025; done
grep -q "joined to the device" "$work/tap.err" || { echo "bench-net-tcp.sh: vioguest net tap: $(tail -1 "$work/tap.err")" >&2; exit 1; }
ip -n "$B" link set vbt-g address 52:54:00:00:0b:02
ip -n "$B" addr add 10.77.0.2/24 dev vbt-g; ip -n "$B" link set vbt-g up

ip netns exec "$B" iperf3 -s -D -I "$work/iperf-b.pid" >/dev/null
ip netns exec "$D" iperf3 -s -D -I "$work/iperf-d.pid" >/dev/null
sleep 0.5
pids+=("$(cat "$work/iperf-b.pid")" "$(cat "$work/iperf-d.pid")")
ip netns exec "$A" busybox ping -c 1 -W 5 10.77.0.2 >/dev/null 2>&1 || true  # ARP settled before timing

# gbps NS ADDR [-R]: one iperf3 run's received Gbit/s.
gbps() {
  local ns=$1 addr=$2
  shift 2
  ip netns exec "$ns" iperf3 -c "$addr" -t "$SECS" -J "$@" >"$work/iperf.json" 2>&1 ||
    { echo "bench-net-tcp.sh: iperf3 -c $addr $*: $(tail -3 "$work/iperf.json")" >&2; exit 1; }
  python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' \
    "$work/iperf.json"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
vf=() vr=() bf=() br=()
for r in $(seq "$ROUNDS"); do
  bf+=("$(gbps "$C" 10.78.0.2)"); vf+=("$(gbps "$A" 10.77.0.2)")
  br+=("$(gbps "$C" 10.78.0.2 -R)"); vr+=("$(gbps "$A" 10.77.0.2 -R)")
  echo "round $r: veth ${bf[-1]} / ${br[-1]} Gbit/s, vios ($T) ${vf[-1]} / ${vr[-1]} Gbit/s (forward / reverse)"
done
echo "n0 counters: $("$VIOSCTL" --control "$work/vios.ctl" stats n0 | awk '$1 ~ /(rx|tx)_(packets|gso_frames)$|drop_/ && $2 != 0 {printf "%s=%s ", $1, $2}')"
echo "up0 counters: $("$VIOSCTL" --control "$work/vios.ctl" stats up0 2>/dev/null | awk '$2 ~ /^[0-9]+$/ && $2 != 0 {printf "%s=%s ", $1, $2}')"
mf=$(median "${vf[@]}") mr=$(median "${vr[@]}") bfm=$(median "${bf[@]}") brm=$(median "${br[@]}")
awk -v t="$T" -v s="$SECS" -v f="$mf" -v r="$mr" -v bf="$bfm" -v br="$brm" 'BEGIN {
  printf "median: A->B vios %.2f Gbit/s vs veth %.2f (%.2fx); B->A vios %.2f vs veth %.2f (%.2fx); transport %s, %s s runs\n",
    f, bf, f / bf, r, br, r / br, t, s }'
