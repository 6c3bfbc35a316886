#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# virtio-vsock stream throughput and round trips, guest to a host Unix
# socket, over shm, vhost-user (vioguest as the VMM), crq (crqd) and Xen
# (xenemud), against the same server and client over a Unix socket directly,
# in one session. The server is tests/vsock's vsock-peer serve (on each
# device's uds-path_5000, and on a plain socket for the baseline); the
# client is vioguest vsock bench (through vios's hub) or vsock-peer bench
# (the baseline). Workloads: tx (guest to host) and rx (host to guest) with
# 4 KiB and 64 KiB writes, rr with 64 B round trips; both ends count the
# bytes (tx) and the echo is compared (rr).
#   --secs N        seconds per run (default 3)
#   --transports L  comma-separated subset of shm,vhost-user,crq,xen
#   --host-window SIZE  vios's window only (its buf-alloc: what the guest
#                   may send ahead to a host socket); default: --window
#   --rounds N      rounds per workload (default 3); each round runs the
#                   baseline, then every transport; medians are printed
#   --window SIZE   the credit window both ways: vios's buf-alloc and the
#                   guest driver's (default: each one's own, vios 1M within
#                   its host budget, the guest 256K as Linux's default
#                   socket buffer); above 256K the guest also posts 96
#                   receive buffers instead of 64
# Prints one line per workload and path (medians) and the ratio to the
# baseline; docs/performance.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=3
ROUNDS=3
TRANSPORTS=shm,vhost-user,crq,xen
WINDOW=
HOST_WINDOW=
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --transports) TRANSPORTS="$2"; shift 2 ;;
    --window) WINDOW="$2"; shift 2 ;;
    --host-window) HOST_WINDOW="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "bench-vsock.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
BUILD=build/release
scripts/configure.sh "$BUILD"
cmake --build "$BUILD" --target vios viosctl vioguest vsock-peer crqd xenemud >/dev/null
VIOS=$BUILD/vios/vios
VIOSCTL=$BUILD/vios/viosctl
VIOGUEST=$BUILD/guest/tool/vioguest
PEER=$BUILD/tests/vsock/vsock-peer
work=$(mktemp -d /tmp/vioport-bench-vsock.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BUILD/emulators/crq/crqd" --socket "$work/crqd.sock" --control "$work/crqd.ctl" \
  --pair client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:1 2>"$work/crqd.log" &
pids+=($!)
"$BUILD/emulators/xen/xenemud" --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xen.log" &
pids+=($!)
wait_socket "$work/crqd.sock" && wait_socket "$work/xen.sock" || { echo "bench-vsock.sh: emulators did not start" >&2; exit 1; }

declare -A attach=(
  [shm]="transport=shm,path=$work/shm.sock"
  [vhost-user]="transport=vhost-user,socket=$work/vu.sock"
  [crq]="transport=crq,crqd=$work/crqd.sock,partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64"
  [xen]="transport=xen,channel=emu:$work/xen.sock,domid=1"
)
declare -A guest=(
  [shm]="shm:$work/shm.sock"
  [vhost-user]="vhost-user:$work/vu.sock"
  [crq]="crq:$work/crqd.sock,partition=1,unit=0x1000,liobn=0x1000"
  [xen]="xen:emu:$work/xen.sock,domid=1"
)
IFS=, read -r -a list <<<"$TRANSPORTS"
args=()
cid=3
for t in "${list[@]}"; do
  [[ -n "${attach[$t]:-}" ]] || { echo "bench-vsock.sh: unknown transport $t" >&2; exit 2; }
  id=${t//-/}
  hw=${HOST_WINDOW:-$WINDOW}
  args+=(--device "vsock,id=$id,cid=$cid,uds-path=$work/$id.vsock${hw:+,buf-alloc=$hw}" --attach "$id,${attach[$t]}")
  cid=$((cid + 1))
done
"$VIOS" "${args[@]}" --control "$work/vios.ctl" 2>"$work/vios.log" &
pids+=($!)
wait_socket "$work/vios.ctl" || { cat "$work/vios.log" >&2; exit 1; }
for t in "${list[@]}"; do
  id=${t//-/}
  "$PEER" serve --listen "$work/${id}.vsock_5000" >/dev/null &
  pids+=($!)
done
"$PEER" serve --listen "$work/base.sock" >/dev/null &
pids+=($!)
sleep 0.3

rxbufs=64
[[ -z $WINDOW || $WINDOW == 256K || $WINDOW == 262144 ]] || rxbufs=96
gwin=()
[[ -z $WINDOW ]] || gwin=(--buf-alloc "$WINDOW")
echo "vsock: $SECS s per run, window: guest ${WINDOW:-256K (default)}, vios ${HOST_WINDOW:-${WINDOW:-1M (default)}}, median of $ROUNDS rounds (the ratio: median of each round's ratio to that round's baseline); guest client through vios against vsock-peer, baseline = the same over a Unix socket"
printf '%-14s %-12s %12s %10s\n' workload path result ratio
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
run() {  # run MODE SIZE: ROUNDS rounds, each the baseline then every transport
  local mode=$1 size=$2 out v key unit t r
  local -A vals=() ratios=() p50=() p99=()
  if [[ $mode == rr ]]; then key=rps; unit="round trips/s"; else key=mbps; unit=MB/s; fi
  for r in $(seq "$ROUNDS"); do
    out=$("$PEER" bench --connect "$work/base.sock" --mode "$mode" --size "$size" --time "$SECS")
    [[ $(field verified <<<"$out") == yes ]] || { echo "baseline $mode $size not verified: $out" >&2; exit 1; }
    local base
    base=$(field "$key" <<<"$out")
    vals[unix]+=" $base"; p50[unix]+=" $(field p50_us <<<"$out")"; p99[unix]+=" $(field p99_us <<<"$out")"
    for t in "${list[@]}"; do
      out=$("$VIOGUEST" --quiet --transport "${guest[$t]}" vsock bench --cid 2 --port 5000 --mode "$mode" --size "$size" \
        --time "$SECS" "${gwin[@]}" --rx-buffers "$rxbufs" 2>&1) || { echo "$t $mode $size failed: $out" >&2; exit 1; }
      [[ $(field verified <<<"$out") == yes ]] || { echo "$t $mode $size not verified: $out" >&2; exit 1; }
      v=$(field "$key" <<<"$out")
      vals[$t]+=" $v"; ratios[$t]+=" $(awk -v a="$v" -v b="$base" 'BEGIN{printf "%.3f", a/b}')"
      p50[$t]+=" $(field p50_us <<<"$out")"; p99[$t]+=" $(field p99_us <<<"$out")"
    done
  done
  for t in unix "${list[@]}"; do
    local ratio=1.00
    [[ $t == unix ]] || ratio=$(median <<<"${ratios[$t]}")
    printf '%-14s %-12s %12s %10.2f  %s%s\n' "$mode $size" "$t" "$(median <<<"${vals[$t]}")" "$ratio" "$unit" \
      "$([[ $mode == rr ]] && echo " p50 $(median <<<"${p50[$t]}") us p99 $(median <<<"${p99[$t]}") us")"
  done
}
run tx 4096
run tx 65536
run rx 4096
run rx 65536
run rr 64
