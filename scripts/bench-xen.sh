#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# blk over the Xen grant transport (xenemud + vios as dom0 + vioguest as
# domU, three processes) beside the same workloads over shm, in one run.
# Three columns per workload, one at a time:
#   map    vios --attach ...,grants=map: persistent mappings (the default)
#   copy   vios --attach ...,grants=copy: every access a grant copy
#   shm    hypervisor-less shared memory (zero copy), the baseline
# For map and copy it also reports, from vios's counters, grant maps, grant
# copy segments and bytes copied per request, and the ratios the issue
# targets: map/copy at 4K QD32 (>= 2) and shm/map (<= 1.5).
#   --secs N     seconds per workload (default 5)
#   --size MIB   file size (default 512)
#   --build DIR  build directory (default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=5
SIZE=512
BUILD=build/release
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    *) echo "bench-xen.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  scripts/configure.sh "$BUILD"
fi
cmake --build "$BUILD" --target vios viosctl vioguest xenemud >/dev/null
VIOGUEST=$BUILD/guest/tool/vioguest
VIOS=$BUILD/vios/vios
VIOSCTL=$BUILD/vios/viosctl
XENEMUD=$BUILD/emulators/xen/xenemud

work=$(mktemp -d /dev/shm/vioport-xen-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for d in map copy shm; do dd if=/dev/urandom of="$work/$d.img" bs=1M count="$SIZE" status=none; done

"$XENEMUD" --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xenemud.log" &
pids+=($!)
wait_socket "$work/xen.sock" || true
# Domain 1 drives the mapped device, domain 2 the copied one.
XEN="channel=emu:$work/xen.sock"
"$VIOS" --device "blk,id=map,path=$work/map.img" --device "blk,id=copy,path=$work/copy.img" \
  --device "blk,id=shm,path=$work/shm.img" \
  --attach "map,transport=xen,$XEN,domid=1,grants=map" \
  --attach "copy,transport=xen,$XEN,domid=2,grants=copy" \
  --attach "shm,transport=shm,path=$work/shm.sock" \
  --control "$work/vios.ctl" --log-level warning 2>"$work/vios.log" &
pids+=($!)
wait_socket "$work/vios.ctl" || true
[[ -S "$work/vios.ctl" ]] || { echo "bench-xen.sh: vios did not start: $(tail -2 "$work/vios.log")" >&2; exit 1; }

declare -A TRANSPORT=(
  [map]="xen:emu:$work/xen.sock,domid=1"
  [copy]="xen:emu:$work/xen.sock,domid=2"
  [shm]="shm:$work/shm.sock")
WORKLOADS=("randread 4K 1" "randread 4K 32" "randwrite 4K 32" "read 64K 32" "write 64K 32")
declare -A IOPS MBPS P50 PER
counters() {  # ops maps copy-segments bytes of device $1
  local id=$1
  echo "$(( $(stat "$id" reads) + $(stat "$id" writes) )) $(stat "$id" xen.grant_maps) $(stat "$id" xen.grant_copies)" \
    "$(stat "$id" xen.grant_copy_bytes)"
}

for w in "${WORKLOADS[@]}"; do
  set -- $w
  for d in map copy shm; do
    [[ $d != shm ]] && read -r o0 m0 c0 b0 <<<"$(counters "$d")"
    out=$("$VIOGUEST" --quiet --memory 64 --transport "${TRANSPORT[$d]}" blk bench --pattern "$1" --bs "$2" \
      --qd "$3" --time "$SECS" 2>"$work/vioguest.err") || { echo "bench-xen.sh: $d $w failed: $(tail -1 "$work/vioguest.err")" >&2; exit 1; }
    IOPS[$d,$w]=$(grep '^result device=blk' <<<"$out" | field iops)
    MBPS[$d,$w]=$(grep '^result device=blk' <<<"$out" | field mbps)
    P50[$d,$w]=$(lat <<<"$out")
    if [[ $d != shm ]]; then
      read -r o1 m1 c1 b1 <<<"$(counters "$d")"
      ops=$((o1 - o0))
      PER[$d,$w]=$(awk -v o="$ops" -v m="$((m1 - m0))" -v c="$((c1 - c0))" -v b="$((b1 - b0))" \
        'BEGIN { if (o == 0) print "- - -"; else printf "%.3f %.1f %.0f", m / o, c / o, b / o }')
    fi
  done
done

echo "vioguest blk bench, ${SIZE} MiB files in /dev/shm, ${SECS} s per workload, 1 queue, split rings"
printf '%-9s %-3s %3s | %9s %8s %7s | %9s %8s %7s | %9s %8s %7s | %8s %8s | %s\n' pattern bs qd "map IOPS" "MB/s" \
  "p50 us" "copy IOPS" "MB/s" "p50 us" "shm IOPS" "MB/s" "p50 us" "map/copy" "shm/map" \
  "per request (map | copy): maps copy-segments bytes-copied"
for w in "${WORKLOADS[@]}"; do
  set -- $w
  rc=$(awk -v a="${IOPS[map,$w]}" -v b="${IOPS[copy,$w]}" 'BEGIN{printf "%.2f", a/b}')
  rs=$(awk -v a="${IOPS[shm,$w]}" -v b="${IOPS[map,$w]}" 'BEGIN{printf "%.2f", a/b}')
  printf '%-9s %-3s %3s | %9s %8s %7s | %9s %8s %7s | %9s %8s %7s | %8s %8s | %s | %s\n' "$1" "$2" "$3" \
    "${IOPS[map,$w]}" "${MBPS[map,$w]}" "${P50[map,$w]}" "${IOPS[copy,$w]}" "${MBPS[copy,$w]}" "${P50[copy,$w]}" \
    "${IOPS[shm,$w]}" "${MBPS[shm,$w]}" "${P50[shm,$w]}" "$rc" "$rs" "${PER[map,$w]}" "${PER[copy,$w]}"
done
w="randread 4K 32"
awk -v m="${IOPS[map,$w]}" -v c="${IOPS[copy,$w]}" -v s="${IOPS[shm,$w]}" 'BEGIN {
  printf "targets at 4K QD32 randread: map/copy = %.2f (>= 2: %s), shm/map = %.2f (<= 1.5: %s)\n",
    m / c, (m >= 2 * c) ? "met" : "NOT met", s / m, (s <= 1.5 * m) ? "met" : "NOT met" }'
