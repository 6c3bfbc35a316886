#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every Debian 12 package vioport needs to build, test, fuzz and benchmark.
# Idempotent: when everything is already installed it only runs dpkg-query and exits.
#   scripts/install-deps.sh [--dry-run]
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  clang-14 lld-14 libclang-rt-14-dev llvm-14
  # libraries the project is allowed to use
  libboost-dev libboost-system-dev
  libabsl-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  libtomlplusplus-dev
  # JSON for vios's control API (JSON-RPC 2.0)
  nlohmann-json3-dev
  # a real Prometheus server the metrics test starts, scrapes vios and queries
  prometheus
  # the control API's Python client (docs/api.md, run by a test) and the
  # fuzz corpus and benchmark scripts
  python3
  libxen-dev
  # real xenstore clients (xenstore-read/-write/-ls/-watch ...) the xenstore
  # emulator (emulators/xen) is tested against
  xenstore-utils
  liburing-dev
  # real peers for the vhost-user transport: QEMU (TCG) booting a Linux guest,
  # qemu-storage-daemon (in qemu-utils), and the guest's busybox initramfs
  qemu-system-x86 qemu-utils busybox-static cpio
  # real peers for virtio-net: DPDK's testpmd (in dpdk-dev) with the
  # virtio-user and vhost PMDs, iperf3 and socat for TCP through the tap
  # uplink, iproute2 for the test's network namespaces
  dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
  iperf3 socat iproute2
)

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
[[ "${1:-}" == "--dry-run" ]] && exit 0

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# An old or empty package list makes apt-get install fail; refresh it once per run.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
