#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# virtio-net packets per second into vios against DPDK's own vhost, in one
# session: testpmd's virtio-user PMD generates 64 B packets (txonly, one
# queue pair) into (a) DPDK's net_vhost PMD in a second testpmd (rxonly)
# and (b) vios's net device over vhost-user (vios sinks them: its switch has
# no other port). Each receiver's busy core is CPU 0 and the generator's
# CPU 1; the rounds alternate so a busy machine slows both alike.
#   --secs N     seconds per run (default 6)
#   --rounds N   alternations (default 2)
# Prints one line per run and the ratio of the medians; docs/performance.md
# records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=6
ROUNDS=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "bench-net.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v dpdk-testpmd >/dev/null || { echo "bench-net.sh: dpdk-testpmd missing (scripts/install-deps.sh)" >&2; exit 1; }
scripts/configure.sh build/release
cmake --build build/release --target vios >/dev/null
work=$(mktemp -d /tmp/vioport-bench-net.XXXXXX)
sink=""
cleanup() { [[ -n "$sink" ]] && kill -INT "$sink" 2>/dev/null; sleep 0.5; [[ -n "$sink" ]] && kill -9 "$sink" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# generate SOCKET: testpmd txonly for SECS; prints packets per second.
generate() {
  local log="$work/tx.log"
  stdbuf -oL dpdk-testpmd --lcores '0@0,1@1' --main-lcore 0 --no-huge -m 1024 --no-pci --file-prefix "vu$$" \
    --vdev "net_virtio_user0,path=$1,queues=1" -- --forward-mode=txonly --total-num-mbufs=4096 \
    --stats-period 1 --nb-cores=1 >"$log" 2>&1 &
  local p=$!
  sleep 2  # start-up, not counted
  local before after
  before=$(grep -o 'TX-packets: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  sleep "$SECS"
  after=$(grep -o 'TX-packets: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  kill -INT "$p"; wait "$p" || true
  echo $(((after - before) / SECS))
}

dpdk_run() {
  rm -f "$work/vh.sock"
  stdbuf -oL dpdk-testpmd --lcores '0@1,1@0' --main-lcore 0 --no-huge -m 1024 --no-pci --file-prefix "vh$$" \
    --vdev "net_vhost0,iface=$work/vh.sock,queues=1" -- --forward-mode=rxonly --total-num-mbufs=4096 \
    --stats-period 1 --nb-cores=1 >"$work/vh.log" 2>&1 &
  sink=$!
  for _ in $(seq 100); do [[ -S "$work/vh.sock" ]] && break; sleep 0.05; done
  generate "$work/vh.sock"
  kill -INT "$sink"; wait "$sink" || true; sink=""
}

vios_run() {
  rm -f "$work/n0.sock"
  taskset -c 0 build/release/vios/vios --netdev switch,id=sw0 --device net,id=n0,switch=sw0 \
    --attach "n0,transport=vhost-user,socket=$work/n0.sock,memory=any" >"$work/vios.log" 2>&1 &
  sink=$!
  for _ in $(seq 100); do [[ -S "$work/n0.sock" ]] && break; sleep 0.05; done
  generate "$work/n0.sock"
  kill "$sink"; wait "$sink" || true; sink=""
}

dpdk=() vios=()
for r in $(seq "$ROUNDS"); do
  d=$(dpdk_run); dpdk+=("$d"); echo "round $r: DPDK net_vhost rxonly  $(printf '%10d' "$d") pps"
  v=$(vios_run); vios+=("$v"); echo "round $r: vios net (switch)     $(printf '%10d' "$v") pps"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
md=$(median "${dpdk[@]}") mv=$(median "${vios[@]}")
awk -v d="$md" -v v="$mv" 'BEGIN { printf "median: DPDK %.2f Mpps, vios %.2f Mpps, vios/DPDK = %.2f\n", d/1e6, v/1e6, v/d }'
