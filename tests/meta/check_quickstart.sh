#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's two commands in any order in one checkout: demo.sh and test.sh
# both configure build/release through scripts/configure.sh, which states
# every option, so whatever configured the folder before (the other script,
# the same one, or an old cache with the benchmarks or tests switched off)
# the build plan holds everything either script builds and runs.
#   check_quickstart.sh SOURCE_DIR SCRATCH_DIR
set -euo pipefail
src=$1
scratch=$2
rm -rf "$scratch"
mkdir -p "$scratch"
for s in demo.sh test.sh; do
  grep -q '^[^#]*scripts/configure.sh build/release' "$src/scripts/$s" ||
    { echo "FAIL: scripts/$s does not configure build/release with scripts/configure.sh"; exit 1; }
done
# What each script builds or runs from build/release.
demo_needs=(vios vioguest viosctl crqd xenemud)
test_needs=(vioport_bench vios_system_tests linux_guest_tests vioport_memcpy)
check_plan() {  # $1: build dir, $2: what configured it last
  local targets
  targets=$(ninja -C "$1" -t targets all | sed 's/:.*//')
  for t in "${demo_needs[@]}" "${test_needs[@]}"; do
    grep -Eq "(^|/)$t\$" <<<"$targets" || { echo "FAIL: after $2, build/release cannot build $t"; exit 1; }
  done
  grep -q '^VIOPORT_BENCHMARKS:BOOL=ON' "$1/CMakeCache.txt" || { echo "FAIL: after $2, benchmarks are off"; exit 1; }
}
n=0
for order in "demo test" "test demo" "demo demo" "test test" "stale-cache demo" "stale-cache test"; do
  dir="$scratch/$n"
  n=$((n + 1))
  for step in $order; do
    if [[ $step == stale-cache ]]; then
      # What the demo used to leave behind: no benchmarks, and no tests either.
      cmake -S "$src" -B "$dir" -G Ninja -DVIOPORT_BENCHMARKS=OFF -DVIOPORT_TESTS=OFF >/dev/null
      continue
    fi
    "$src/scripts/configure.sh" "$dir"
    check_plan "$dir" "$order"
  done
  echo "ok: $order"
done
rm -rf "$scratch"
echo "quickstart: every order configures a complete build"
