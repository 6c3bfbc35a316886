#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Configures the optimised build both README commands share (build/release by
# default). Every option is given, never left to an existing cache, so the
# demo and the tests can run in either order in one checkout: each finds the
# build it needs whatever configured the folder before.
#   scripts/configure.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
cmake -S . -B "${1:-build/release}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVIOPORT_WERROR=ON \
  -DVIOPORT_TESTS=ON -DVIOPORT_BENCHMARKS=ON -DVIOPORT_FUZZ=OFF -DVIOPORT_SANITIZE=OFF >/dev/null
