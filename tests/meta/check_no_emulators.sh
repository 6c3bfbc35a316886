#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A build for real hypervisors (-DVIOPORT_EMULATORS=OFF) links no emulator
# code into vios: builds vios that way, looks for the emulators' symbols in
# it, and checks that vios says plainly that the emulators' channels are not
# in this build.
#   check_no_emulators.sh SOURCE_DIR SCRATCH_DIR
set -euo pipefail
src=$1
dir=$2
cmake -S "$src" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVIOPORT_EMULATORS=OFF -DVIOPORT_TESTS=OFF \
  -DVIOPORT_BENCHMARKS=OFF -DVIOPORT_FUZZ=OFF -DVIOPORT_SANITIZE=OFF >/dev/null
cmake --build "$dir" --target vios vioguest >/dev/null
fail=0
for bin in "$dir/vios/vios" "$dir/guest/tool/vioguest"; do
  # The emulators' namespaces and classes: the hypervisor models, their
  # daemons' clients and the channels they register.
  if nm -C "$bin" | grep -E 'vioport::emu::|crq::Hypervisor|crq::RemotePartition|crq::LocalPartition|xen::RemoteDomain|xen::GrantTables|xen::EventChannels|XenStore|OpenEmulatorChannel|RegisterCrqdChannel|RegisterXenEmulatorChannel' | head -5; then
    echo "FAIL: $bin links emulator code"
    fail=1
  fi
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
truncate -s 1M "$out/d.img"
if "$dir/vios/vios" --device "blk,id=d0,path=$out/d.img" \
    --attach "d0,transport=crq,crqd=$out/none.sock,partition=2,unit=1,liobn=1,remote-liobn=2,remote-window-mib=1" \
    2>"$out/err"; then
  echo "FAIL: vios served crq without a crq channel"
  fail=1
fi
grep -q "no crq channel 'crqd'" "$out/err" || { echo "FAIL: vios did not say the crqd channel is missing:"; cat "$out/err"; fail=1; }
if "$dir/vios/vios" --device "blk,id=d0,path=$out/d.img" --attach "d0,transport=xen,channel=emu:$out/x.sock,domid=1" \
    2>"$out/err"; then
  echo "FAIL: vios served xen over the emulator without it"
  fail=1
fi
grep -q "is not one of this build's: xen" "$out/err" || { echo "FAIL: vios did not name the channels it has:"; cat "$out/err"; fail=1; }
[[ $fail -eq 0 ]] && echo "no-emulators: vios and vioguest link no emulator code"
exit $fail
