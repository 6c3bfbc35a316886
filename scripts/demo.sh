#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Quick start, command one: installs what is missing, builds vioport (optimised)
# and runs the demo: one vios serving a file-backed blk, an rng and a console to
# vioguest processes over hypervisor-less shared memory, a second disk over
# vhost-user to vioguest playing the VMM, a third over vhost-user to a real
# Linux guest booted by QEMU (TCG), a fourth over PowerVM CRQ (vios and
# vioguest as partitions of the crqd hypervisor emulator, data moved only by
# H_COPY_RDMA), and a fifth over Xen grants (vios as dom0 and vioguest as
# domU of the xenemud emulator, persistent grant maps); then a result table.
#   --size MIB      disk size (default 256)
#   --bench-secs N  seconds for each 4 KiB QD32 random-read row (default 3)
#   --no-linux      skip the QEMU guest (it downloads Debian's cloud kernel once)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=256
BENCH_SECS=3
LINUX=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --no-linux) LINUX=0; shift ;;
    --size) SIZE_MIB="$2"; shift 2 ;;
    --bench-secs) BENCH_SECS="$2"; shift 2 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
scripts/configure.sh build/release
cmake --build build/release --target vios vioguest viosctl crqd xenemud
BIN=build/release

base=/tmp
[[ -d /dev/shm ]] && base=/dev/shm
work=$(mktemp -d "$base/vioport-demo.XXXXXX")
vios_pid=""
crqd_pid=""
xenemud_pid=""
cleanup() {
  [[ -n "$vios_pid" ]] && kill "$vios_pid" 2>/dev/null && wait "$vios_pid" 2>/dev/null || true
  [[ -n "$crqd_pid" ]] && kill "$crqd_pid" 2>/dev/null && wait "$crqd_pid" 2>/dev/null || true
  [[ -n "$xenemud_pid" ]] && kill "$xenemud_pid" 2>/dev/null && wait "$xenemud_pid" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s "${SIZE_MIB}M" "$work/disk.img"
truncate -s 64M "$work/disk1.img" "$work/disk2.img" "$work/disk3.img" "$work/disk4.img"
mkfifo "$work/console.in"
echo "== vios: blk (file-backed, $SIZE_MIB MiB in $work), rng, console (vios's stdio) over shm;"
echo "   two more 64 MiB disks over vhost-user (KVM's back-end protocol), one over PowerVM CRQ, one over Xen grants"
# The PowerVM hypervisor emulator: one adapter pair, client partition 1
# (the guest, 64 MiB DMA window) and server partition 2 (vios).
$BIN/emulators/crq/crqd --socket "$work/crqd.sock" --control "$work/crqd.ctl" \
  --pair client=1:0x1000:0x1000:64,server=2:0x2000:0x2000:16 2>"$work/crqd.log" &
crqd_pid=$!
for _ in $(seq 200); do [[ -S "$work/crqd.sock" ]] && break; sleep 0.05; done
# The Xen emulator: grant tables, event channels and xenstored; vios joins
# it as dom0, the guest as domain 1.
$BIN/emulators/xen/xenemud --xenstore "$work/xs.sock" --domains "$work/xen.sock" 2>"$work/xenemud.log" &
xenemud_pid=$!
for _ in $(seq 200); do [[ -S "$work/xen.sock" ]] && break; sleep 0.05; done
$BIN/vios/vios \
  --device "blk,id=disk0,path=$work/disk.img" \
  --device rng,id=rng0 \
  --device console,id=con0,stdio=on \
  --device "blk,id=disk1,path=$work/disk1.img" \
  --device "blk,id=disk2,path=$work/disk2.img,num-queues=2" \
  --attach "disk0,transport=shm,path=$work/disk0.sock" \
  --attach "rng0,transport=shm,path=$work/rng0.sock" \
  --attach "con0,transport=shm,path=$work/con0.sock" \
  --attach "disk1,transport=vhost-user,socket=$work/disk1.sock" \
  --attach "disk2,transport=vhost-user,socket=$work/disk2.sock" \
  --device "blk,id=disk3,path=$work/disk3.img" \
  --attach "disk3,transport=crq,crqd=$work/crqd.sock,partition=2,unit=0x2000,liobn=0x2000,remote-liobn=0x1000,remote-window-mib=64" \
  --device "blk,id=disk4,path=$work/disk4.img" \
  --attach "disk4,transport=xen,channel=emu:$work/xen.sock,domid=1" \
  --control "$work/vios.ctl" --log-level warning \
  <"$work/console.in" >"$work/console.out" 2>"$work/vios.log" &
vios_pid=$!
exec 3>"$work/console.in"   # the host side of the console: we type into it
for _ in $(seq 200); do [[ -S "$work/vios.ctl" ]] && break; sleep 0.05; done
[[ -S "$work/vios.ctl" ]] || { echo "vios did not start:"; cat "$work/vios.log"; exit 1; }

guest() { $BIN/guest/tool/vioguest --quiet --transport "shm:$work/$1.sock" "${@:2}"; }
vmm() { $BIN/guest/tool/vioguest --quiet --transport "vhost-user:$work/$1.sock" "${@:2}"; }
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

# A 64 MiB disk's three rows: write + flush, verify against the writer's
# checksum, and a 4 KiB QD32 random-read benchmark, through `$@` (a vioguest
# invocation up to its command).
blk_rows() {
  local name=$1 seed=$2
  shift 2
  out=$("$@" blk write --seed "$seed")
  row blk "$name" "write 64 MiB + flush" "$(field mbps <<<"$out")" "-"
  wsum=$(field checksum <<<"$out")
  out=$("$@" blk verify --seed "$seed")
  [[ "$(field checksum <<<"$out")" == "$wsum" && "$(field verified <<<"$out")" == yes ]] && v=yes || v=NO
  row blk "$name" "read 64 MiB" "$(field mbps <<<"$out")" "$v"
  out=$("$@" blk bench --pattern randread --bs 4K --qd 32 --time "$BENCH_SECS")
  echo "$out" | grep -v '^result'
  row blk "$name" "4K randread QD32: $(field iops <<<"$out") IOPS" "$(field mbps <<<"$out")" "-"
}

echo "== blk over vhost-user: vioguest plays the VMM (guest RAM in a memfd, vios maps it)"
blk_rows vhost-user 4 vmm disk1

echo "== blk over PowerVM CRQ: vioguest is client partition 1 of crqd, vios server partition 2;"
echo "   vios never maps the guest's memory, every byte moves by H_COPY_RDMA"
crq() { $BIN/guest/tool/vioguest --quiet --transport "crq:$work/crqd.sock,partition=1,unit=0x1000,liobn=0x1000" "$@"; }
blk_rows crq 5 crq

echo "== blk over Xen grants: vioguest is domain 1 of xenemud, vios dom0; the guest grants its"
echo "   pages (consecutive refs), vios maps them once and keeps them (persistent grants)"
xen() { $BIN/guest/tool/vioguest --quiet --transport "xen:emu:$work/xen.sock,domid=1" "$@"; }
blk_rows xen 6 xen

if ((LINUX)); then
  echo "== blk over vhost-user to a real Linux guest: QEMU (TCG) boots Debian's cloud kernel;"
  echo "   the guest's own virtio_blk driver writes 8 MiB with O_DIRECT, drops caches, reads back, compares"
  scripts/guest-kernel.sh
  kdir=build/guest-kernel
  mkdir -p "$work/data"
  head -c 8M /dev/urandom >"$work/data/pattern"
  tests/linux/mkinitramfs.sh --kernel "$kdir" --init tests/linux/init.sh --out "$work/initramfs" --data "$work/data"
  t0=$(date +%s%N)
  timeout 300 qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot -nic none \
    -object memory-backend-memfd,id=mem,size=256M,share=on -machine q35,memory-backend=mem \
    -chardev "socket,id=c0,path=$work/disk2.sock,reconnect=1" -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
    -kernel "$kdir/vmlinuz" -initrd "$work/initramfs" \
    -append "console=ttyS0 quiet panic=-1 vioport.test=verified_data" >"$work/qemu.log" 2>&1 || true
  ms=$((($(date +%s%N) - t0) / 1000000))
  grep -a "VIOPORT-RESULT" "$work/qemu.log" || { echo "no result from the guest:"; tail -20 "$work/qemu.log"; }
  # The guest said PASS, and the bytes are in vios's backing file.
  grep -aq "VIOPORT-RESULT: PASS" "$work/qemu.log" && cmp -n 8388608 "$work/data/pattern" "$work/disk2.img" && v=yes || v=NO
  row blk "vhost-user" "Linux guest (QEMU): 8 MiB, $((ms / 1000)).$((ms % 1000 / 100)) s boot+I/O" "-" "$v"
fi

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
