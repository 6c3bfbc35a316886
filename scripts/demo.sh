#!/usr/bin/env bash
# Quick start, command one: installs what is missing, builds vioport (optimised)
# and runs the demo. Arguments are passed to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
  echo "Demo options: build it once, then run build/release/tests/demo/vioport-demo --help"
  exit 0
fi
scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DVIOPORT_BENCHMARKS=OFF >/dev/null
cmake --build build/release --target vioport-demo
exec build/release/tests/demo/vioport-demo "$@"
