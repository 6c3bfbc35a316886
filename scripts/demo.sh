#!/usr/bin/env bash
# Quick start, command one: installs what is missing, builds vioport (optimised)
# and runs the demo: vios serving a file-backed blk, an rng and a console to
# vioguest processes over hypervisor-less shared memory, then a result table.
#   --size MIB      disk size (default 256)
#   --bench-secs N  seconds for the 4 KiB QD32 random-read row (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=256
BENCH_SECS=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --size) SIZE_MIB="$2"; shift 2 ;;
    --bench-secs) BENCH_SECS="$2"; shift 2 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DVIOPORT_BENCHMARKS=OFF >/dev/null
cmake --build build/release --target vios vioguest viosctl
BIN=build/release

base=/tmp
[[ -d /dev/shm ]] && base=/dev/shm
work=$(mktemp -d "$base/vioport-demo.XXXXXX")
vios_pid=""
cleanup() {
  [[ -n "$vios_pid" ]] && kill "$vios_pid" 2>/dev/null && wait "$vios_pid" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s "${SIZE_MIB}M" "$work/disk.img"
mkfifo "$work/console.in"
echo "== vios: blk (file-backed, $SIZE_MIB MiB in $work), rng, console (vios's stdio)"
$BIN/vios/vios \
  --device "blk,id=disk0,path=$work/disk.img" \
  --device rng,id=rng0 \
  --device console,id=con0,stdio=on \
  --attach "disk0,transport=shm,path=$work/disk0.sock" \
  --attach "rng0,transport=shm,path=$work/rng0.sock" \
  --attach "con0,transport=shm,path=$work/con0.sock" \
  --control "$work/vios.ctl" --log-level warning \
  <"$work/console.in" >"$work/console.out" 2>"$work/vios.log" &
vios_pid=$!
exec 3>"$work/console.in"   # the host side of the console: we type into it
for _ in $(seq 200); do [[ -S "$work/vios.ctl" ]] && break; sleep 0.05; done
[[ -S "$work/vios.ctl" ]] || { echo "vios did not start:"; cat "$work/vios.log"; exit 1; }

guest() { $BIN/guest/tool/vioguest --quiet --transport "shm:$work/$1.sock" "${@:2}"; }
field() { sed -n 's/^result .*[ ]'"$1"'=\([^ ]*\).*/\1/p' | tail -1; }
rows=()
row() { rows+=("$(printf '%-8s %-10s %-34s %10s %9s' "$@")"); }

echo "== blk: write ${SIZE_MIB} MiB of seeded data, read it back and compare"
out=$(guest disk0 blk write --seed 2026)
row blk shm "write ${SIZE_MIB} MiB + flush" "$(field mbps <<<"$out")" "-"
wsum=$(field checksum <<<"$out")
out=$(guest disk0 --packed blk verify --seed 2026)
rsum=$(field checksum <<<"$out")
ok=$(field verified <<<"$out")
[[ "$wsum" == "$rsum" && "$ok" == yes ]] && v=yes || v=NO
row blk shm "read ${SIZE_MIB} MiB (packed rings)" "$(field mbps <<<"$out")" "$v"

echo "== blk: 4 KiB random reads, queue depth 32, ${BENCH_SECS}s"
out=$(guest disk0 blk bench --pattern randread --bs 4K --qd 32 --time "$BENCH_SECS")
echo "$out" | grep -v '^result'
row blk shm "4K randread QD32: $(field iops <<<"$out") IOPS" "$(field mbps <<<"$out")" "-"

echo "== rng: 16 MiB"
out=$(guest rng0 rng --length 16M)
row rng shm "read 16 MiB" "$(field mbps <<<"$out")" "$(field verified <<<"$out")"

echo "== console: guest -> vios stdout, vios stdin -> guest"
echo "hello from the host" >&3
out=$(guest con0 console --send "hello from the guest" --expect "hello from the host" --timeout 10) || true
sleep 0.2
grep -q "hello from the guest" "$work/console.out" && sent=yes || sent=no
[[ "$(field verified <<<"$out")" == yes && "$sent" == yes ]] && v=yes || v=NO
row console shm "echo both ways" "-" "$v"

echo
echo "== vios devices (viosctl list)"
$BIN/vios/viosctl --control "$work/vios.ctl" list | sed '$d'
echo
printf '%-8s %-10s %-34s %10s %9s\n' DEVICE TRANSPORT OPERATIONS "MB/s" VERIFIED
for r in "${rows[@]}"; do echo "$r"; done

kill -TERM "$vios_pid"
wait "$vios_pid" && rc=0 || rc=$?
vios_pid=""
[[ $rc -eq 0 ]] || { echo "vios exited with $rc:"; cat "$work/vios.log"; exit 1; }
if printf '%s\n' "${rows[@]}" | grep -q ' NO$'; then
  echo "demo: verification FAILED"; cat "$work/vios.log"; exit 1
fi
echo "demo: all data verified; vios stopped cleanly on SIGTERM"
