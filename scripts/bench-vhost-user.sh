#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# blk over vhost-user: vioguest (playing the VMM and the guest) against
# qemu-storage-daemon and against vios in one run, one back-end at a time
# (alternating workload by workload), on the same tmpfs-backed file
# (/dev/shm), with the same workloads: 4 KiB random read and random write at
# queue depth 1 and 32, one queue.
#   --secs N       seconds per workload (default 5)
#   --size MIB     file size (default 1024)
#   --qsd-aio A    qemu-storage-daemon's file aio: io_uring (default, as vios) or threads
#   --build DIR    build directory (default build/release; configured and built here)
# Prints one table with IOPS, p50 latency and the ratio vios/QSD.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=5
SIZE=1024
QSD_AIO=io_uring
BUILD=build/release
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --qsd-aio) QSD_AIO="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    *) echo "bench-vhost-user.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
QSD=$(command -v qemu-storage-daemon || true)
if [[ -z "$QSD" ]]; then
  echo "bench-vhost-user.sh: qemu-storage-daemon not found (apt-get install qemu-utils, or scripts/install-deps.sh)" >&2
  exit 2
fi
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  scripts/configure.sh "$BUILD"
fi
cmake --build "$BUILD" --target vios vioguest >/dev/null
VIOGUEST=$BUILD/guest/tool/vioguest
VIOS=$BUILD/vios/vios

work=$(mktemp -d /dev/shm/vioport-vhost-bench.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# A fully allocated file, so reads are not served from holes.
dd if=/dev/urandom of="$work/disk.img" bs=1M count="$SIZE" status=none

WORKLOADS=("randread 4K 1" "randread 4K 32" "randwrite 4K 1" "randwrite 4K 32")
declare -A IOPS P50 SKIP

# run_backend NAME SOCKET WORKLOAD COMMAND...: starts the back-end, runs
# one workload against it, stops it with SIGTERM (it must exit 0).
run_backend() {
  local name=$1 sock=$2 w=$3
  shift 3
  [[ -n "${SKIP[$name]:-}" ]] && return
  rm -f "$sock"
  "$@" 2>"$work/$name.log" >/dev/null &
  pid=$!
  for _ in $(seq 200); do
    [[ -S "$sock" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.025
  done
  if [[ ! -S "$sock" ]]; then
    SKIP[$name]="did not come up: $(tail -1 "$work/$name.log" 2>/dev/null)"
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""
    return
  fi
  set -- $w
  local out
  if out=$("$VIOGUEST" --quiet --memory 128 --transport "vhost-user:$sock" blk bench \
      --pattern "$1" --bs "$2" --qd "$3" --time "$SECS" 2>"$work/$name.vioguest.err"); then
    IOPS[$name,$w]=$(grep '^result device=blk' <<<"$out" | field iops)
    P50[$name,$w]=$(lat <<<"$out")
  else
    SKIP[$name]="vioguest failed on $w: $(tail -1 "$work/$name.vioguest.err")"
  fi
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  pid=""
  [[ $rc -ne 0 ]] && echo "bench-vhost-user.sh: $name exited $rc on SIGTERM" >&2
  return 0
}

# Back-ends alternate workload by workload (never both at once: 2 cores), so
# a change in the machine's load shows in both columns.
for w in "${WORKLOADS[@]}"; do
  run_backend qsd "$work/qsd.sock" "$w" "$QSD" \
    --blockdev "driver=file,node-name=d0,filename=$work/disk.img,aio=$QSD_AIO" \
    --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$work/qsd.sock,writable=on"
  run_backend vios "$work/vios.sock" "$w" "$VIOS" --device "blk,id=d0,path=$work/disk.img" \
    --attach "d0,transport=vhost-user,socket=$work/vios.sock" --log-level warning
done

echo "vioguest blk bench over vhost-user, ${SIZE} MiB file in /dev/shm, ${SECS} s per workload, 1 queue, split rings"
echo "QSD: $("$QSD" --version | head -1), aio=$QSD_AIO; vios: $VIOS"
printf '%-10s %-3s %3s | %10s %7s | %10s %7s | %9s\n' pattern bs qd "QSD IOPS" "p50 us" "vios IOPS" "p50 us" "vios/QSD"
for w in "${WORKLOADS[@]}"; do
  set -- $w
  q=${IOPS[qsd,$w]:-}
  v=${IOPS[vios,$w]:-}
  ratio=-
  [[ -n "$q" && -n "$v" ]] && ratio=$(awk -v a="$v" -v b="$q" 'BEGIN{printf "%.2f", a/b}')
  printf '%-10s %-3s %3s | %10s %7s | %10s %7s | %9s\n' "$1" "$2" "$3" "${q:--}" "${P50[qsd,$w]:--}" \
    "${v:--}" "${P50[vios,$w]:--}" "$ratio"
done
for name in qsd vios; do
  [[ -n "${SKIP[$name]:-}" ]] && echo "$name: SKIPPED ($name ${SKIP[$name]})"
done
exit 0
