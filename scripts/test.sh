#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Quick start, command two (and CI's .ci/run): installs what is missing, then
#   1. an optimised build (warnings are errors) and every test in it,
#   2. a Debug build with AddressSanitizer + UndefinedBehaviorSanitizer (clang,
#      with the libFuzzer targets) and every test in it,
#   3. each fuzz target for VIOPORT_FUZZ_SECONDS (default 60) from its seed corpus.
# Any failure stops the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
FUZZ_SECONDS=${VIOPORT_FUZZ_SECONDS:-60}
JOBS=$(nproc)
start=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() { printf '\n*** vioport tests FAILED: %s\n' "$*" >&2; exit 1; }

step "dependencies"
scripts/install-deps.sh || fail "dependency installation"

count_passed() {  # ctest's "... tests passed, 0 tests failed out of N" -> N
  sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$1" | tail -1
}

step "optimised build"
scripts/configure.sh build/release || fail "configure (release)"
cmake --build build/release -j "$JOBS" || fail "build (release)"
step "tests (optimised)"
ctest --test-dir build/release --output-on-failure -j "$JOBS" | tee build/release/ctest.log || fail "tests (release)"
release_n=$(count_passed build/release/ctest.log)
step "benchmark smoke run (not timed)"
build/release/tests/bench/vioport_bench --benchmark_min_time=0.01 >build/release/bench-smoke.log 2>&1 ||
  { tail -20 build/release/bench-smoke.log; fail "benchmark smoke run"; }

step "sanitizer build (clang, ASan+UBSan, fuzz targets)"
CC=clang-14 CXX=clang++-14 cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DVIOPORT_WERROR=ON \
  -DVIOPORT_SANITIZE=ON -DVIOPORT_FUZZ=ON -DVIOPORT_TESTS=ON -DVIOPORT_BENCHMARKS=OFF >/dev/null || fail "configure (asan)"
cmake --build build/asan -j "$JOBS" || fail "build (asan)"
step "tests (ASan+UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build/asan --output-on-failure -j "$JOBS" | tee build/asan/ctest.log || fail "tests (asan)"
asan_n=$(count_passed build/asan/ctest.log)

fuzz_n=0
for target in build/asan/tests/fuzz/fuzz_*; do
  [[ -x "$target" && -f "$target" ]] || continue
  name=$(basename "$target")
  step "fuzzing $name for ${FUZZ_SECONDS}s"
  seeds="tests/fuzz/corpus/${name#fuzz_}"
  seeds=${seeds%_ring}
  work=$(mktemp -d)
  "$target" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
    -artifact_prefix="build/asan/$name-" "$work" "$seeds" 2>build/asan/$name.log ||
    { tail -40 "build/asan/$name.log"; rm -rf "$work"; fail "fuzz target $name found a crash (artifact in build/asan/)"; }
  grep -E "stat::number_of_executed_units|cov:" "build/asan/$name.log" | tail -2
  rm -rf "$work"
  fuzz_n=$((fuzz_n + 1))
done
[[ $fuzz_n -gt 0 ]] || fail "no fuzz targets were built"

step "done"
echo "release tests: $release_n, sanitizer tests: $asan_n, fuzz targets: $fuzz_n ($FUZZ_SECONDS s each)"
echo "vioport: $((release_n + asan_n + fuzz_n)) passed, 0 failed"
