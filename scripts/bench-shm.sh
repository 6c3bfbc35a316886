#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# blk over shm against the same workload run directly on the file (pread /
# pwrite, queue depth 1), in one session. vios serves a file in /dev/shm.
#   --secs N       seconds per workload (default 5)
#   --mode M       vios attachment mode: event, poll or both (default both)
#   --size MIB     file size (default 1024)
# Prints one table; docs/performance.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=5
MODE=both
SIZE=1024
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    *) echo "bench-shm.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/configure.sh build/release
cmake --build build/release --target vios vioguest >/dev/null
BIN=build/release
work=$(mktemp -d /dev/shm/vioport-bench.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# A fully allocated file, so reads are not served from holes.
dd if=/dev/urandom of="$work/disk.img" bs=1M count="$SIZE" status=none

modes=(event poll)
[[ "$MODE" != both ]] && modes=("$MODE")
printf '%-6s %-10s %-4s %4s | %12s %9s %8s | %12s %9s %8s | %7s\n' mode pattern bs qd "vioport IOPS" "MB/s" "p50 us" "file IOPS" "MB/s" "p50 us" ratio
for mode in "${modes[@]}"; do
  poll=off
  [[ $mode == poll ]] && poll=on
  $BIN/vios/vios --device "blk,id=d0,path=$work/disk.img" \
    --attach "d0,transport=shm,path=$work/d0.sock,poll=$poll" --log-level warning 2>"$work/vios.log" &
  pid=$!
  for _ in $(seq 100); do [[ -S "$work/d0.sock" ]] && break; sleep 0.05; done
  for w in "randread 4K 1" "randread 4K 32" "randwrite 4K 1" "randwrite 4K 32" "read 64K 1" "read 64K 8" "write 64K 8"; do
    set -- $w
    out=$($BIN/guest/tool/vioguest --quiet --memory 128 --transport "shm:$work/d0.sock" blk bench \
      --pattern "$1" --bs "$2" --qd "$3" --time "$SECS" --baseline "$work/disk.img")
    v_iops=$(grep '^result device=blk' <<<"$out" | field iops)
    v_mbps=$(grep '^result device=blk' <<<"$out" | field mbps)
    f_iops=$(grep '^result device=file' <<<"$out" | field iops)
    f_mbps=$(grep '^result device=file' <<<"$out" | field mbps)
    printf '%-6s %-10s %-4s %4s | %12s %9s %8s | %12s %9s %8s | %7s\n' "$mode" "$1" "$2" "$3" "$v_iops" "$v_mbps" \
      "$(lat vioguest <<<"$out")" "$f_iops" "$f_mbps" "$(lat baseline <<<"$out")" \
      "$(awk -v a="$v_iops" -v b="$f_iops" 'BEGIN{printf "%.2f", a/b}')"
  done
  kill "$pid"; wait "$pid" || true; pid=""
  rm -f "$work/d0.sock"
done
