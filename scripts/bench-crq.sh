#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# blk over PowerVM CRQ (crqd + vios + vioguest, three processes) beside the
# same workloads over shm, in one run, with the machine's memcpy bandwidth
# measured in the same run. Three columns per workload, one at a time:
#   crq      vios's crq attachment as shipped (staging buffers on)
#   crq-0    the same with staging=0,read-ahead=off: the straightforward
#            copy path (every byte also memcpy'd through the adapter's bounce
#            buffer, one H_COPY_RDMA per request header)
#   shm      hypervisor-less shared memory (zero copy), the baseline
# For the crq columns it also reports, from vios's counters, H_COPY_RDMA calls,
# bytes copied and CRQ messages (both directions) per request.
#   --secs N            seconds per workload (default 5)
#   --size MIB          file size (default 512)
#   --hcall-delay-ns N  crqd: added to every hypercall (default 0)
#   --build DIR         build directory (default build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
SECS=5
SIZE=512
DELAY=0
BUILD=build/release
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --secs) SECS="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --hcall-delay-ns) DELAY="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    *) echo "bench-crq.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  scripts/configure.sh "$BUILD"
fi
cmake --build "$BUILD" --target vios viosctl vioguest crqd vioport_memcpy >/dev/null
VIOGUEST=$BUILD/guest/tool/vioguest
VIOS=$BUILD/vios/vios
VIOSCTL=$BUILD/vios/viosctl
CRQD=$BUILD/emulators/crq/crqd
MEMCPY=$BUILD/tests/vioport_memcpy

work=$(mktemp -d /dev/shm/vioport-crq-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Fully allocated files, so reads are not served from holes.
for d in crq crq0 shm; do dd if=/dev/urandom of="$work/$d.img" bs=1M count="$SIZE" status=none; done

# Two adapter pairs into one vios partition (2): client partition 1 uses the
# staged adapter, client partition 3 the unstaged one. Server windows of
# 16 MiB hold the queue page, the bounce buffer and 32 staging slots.
"$CRQD" --socket "$work/crqd.sock" --control "$work/crqd.ctl" --hcall-delay-ns "$DELAY" \
  --pair client=1:0x1000:0x1000:256,server=2:0x2000:0x2000:16 \
  --pair client=3:0x3000:0x3000:256,server=2:0x2001:0x2001:16 2>"$work/crqd.log" &
pids+=($!)
wait_socket "$work/crqd.sock" || true
CRQ="crqd=$work/crqd.sock,partition=2,remote-window-mib=256,memory-mib=64"
"$VIOS" --device "blk,id=crq,path=$work/crq.img" --device "blk,id=crq0,path=$work/crq0.img" \
  --device "blk,id=shm,path=$work/shm.img" \
  --attach "crq,transport=crq,$CRQ,unit=0x2000,liobn=0x2000,remote-liobn=0x1000" \
  --attach "crq0,transport=crq,$CRQ,unit=0x2001,liobn=0x2001,remote-liobn=0x3000,staging=0,read-ahead=off" \
  --attach "shm,transport=shm,path=$work/shm.sock" \
  --control "$work/vios.ctl" --log-level warning 2>"$work/vios.log" &
pids+=($!)
wait_socket "$work/vios.ctl" || true
[[ -S "$work/vios.ctl" ]] || { echo "bench-crq.sh: vios did not start: $(tail -2 "$work/vios.log")" >&2; exit 1; }

declare -A TRANSPORT=(
  [crq]="crq:$work/crqd.sock,partition=1,unit=0x1000,liobn=0x1000"
  [crq0]="crq:$work/crqd.sock,partition=3,unit=0x3000,liobn=0x3000"
  [shm]="shm:$work/shm.sock")
WORKLOADS=("randread 4K 1" "randread 4K 32" "randwrite 4K 32" "read 64K 32" "write 64K 32")
declare -A IOPS MBPS P50 PER
counters() {  # ops copies bytes messages of device $1
  local id=$1
  echo "$(( $(stat "$id" reads) + $(stat "$id" writes) )) $(stat "$id" crq.copies) $(stat "$id" crq.copy_bytes)" \
    "$(( $(stat "$id" crq.messages) + $(stat "$id" crq.used_sent) ))"
}

memcpy_before=$("$MEMCPY" --seconds 1 | field mbps)
for w in "${WORKLOADS[@]}"; do
  set -- $w
  for d in crq crq0 shm; do
    [[ $d != shm ]] && read -r o0 c0 b0 m0 <<<"$(counters "$d")"
    out=$("$VIOGUEST" --quiet --memory 256 --transport "${TRANSPORT[$d]}" blk bench --pattern "$1" --bs "$2" \
      --qd "$3" --time "$SECS" 2>"$work/vioguest.err") || { echo "bench-crq.sh: $d $w failed: $(tail -1 "$work/vioguest.err")" >&2; exit 1; }
    IOPS[$d,$w]=$(grep '^result device=blk' <<<"$out" | field iops)
    MBPS[$d,$w]=$(grep '^result device=blk' <<<"$out" | field mbps)
    P50[$d,$w]=$(lat <<<"$out")
    if [[ $d != shm ]]; then
      read -r o1 c1 b1 m1 <<<"$(counters "$d")"
      ops=$((o1 - o0))
      PER[$d,$w]=$(awk -v o="$ops" -v c="$((c1 - c0))" -v b="$((b1 - b0))" -v m="$((m1 - m0))" \
        'BEGIN { if (o == 0) print "- - -"; else printf "%.1f %.0f %.2f", c / o, b / o, m / o }')
    fi
  done
done
memcpy_after=$("$MEMCPY" --seconds 1 | field mbps)
memcpy=$(( (memcpy_before + memcpy_after) / 2 ))

echo "vioguest blk bench, ${SIZE} MiB files in /dev/shm, ${SECS} s per workload, 1 queue, split rings;" \
  "crqd hcall delay ${DELAY} ns"
echo "memcpy (64 KiB blocks, 64 MiB working set, same run): ${memcpy_before} / ${memcpy_after} MB/s (before / after)"
printf '%-9s %-3s %3s | %9s %8s %7s | %9s %8s | %9s %8s %7s | %6s %6s | %s\n' pattern bs qd "crq IOPS" "MB/s" "p50 us" \
  "crq-0 IOPS" "MB/s" "shm IOPS" "MB/s" "p50 us" "crq/0" "crq/shm" "per request (crq | crq-0): copies bytes messages"
for w in "${WORKLOADS[@]}"; do
  set -- $w
  r0=$(awk -v a="${IOPS[crq,$w]}" -v b="${IOPS[crq0,$w]}" 'BEGIN{printf "%.2f", a/b}')
  rs=$(awk -v a="${IOPS[crq,$w]}" -v b="${IOPS[shm,$w]}" 'BEGIN{printf "%.2f", a/b}')
  printf '%-9s %-3s %3s | %9s %8s %7s | %10s %8s | %9s %8s %7s | %6s %7s | %s | %s\n' "$1" "$2" "$3" \
    "${IOPS[crq,$w]}" "${MBPS[crq,$w]}" "${P50[crq,$w]}" "${IOPS[crq0,$w]}" "${MBPS[crq0,$w]}" \
    "${IOPS[shm,$w]}" "${MBPS[shm,$w]}" "${P50[shm,$w]}" "$r0" "$rs" "${PER[crq,$w]}" "${PER[crq0,$w]}"
done
for w in "read 64K 32" "write 64K 32"; do
  awk -v m="${MBPS[crq,$w]}" -v c="$memcpy" -v w="$w" \
    'BEGIN { printf "crq %s: %.0f MB/s = %.0f%% of memcpy (%d MB/s)\n", w, m, 100 * m / c, c }'
done
