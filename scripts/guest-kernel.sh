#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches Debian's cloud kernel for the Linux-guest tests, without installing it:
#   scripts/guest-kernel.sh [CACHE_DIR]     (default: build/guest-kernel at the repo root)
# Downloads linux-image-cloud-amd64's exact kernel package with apt-get download,
# unpacks it with dpkg-deb -x and keeps only CACHE_DIR/vmlinuz and the virtio modules
# in CACHE_DIR/modules/ (with a load order in CACHE_DIR/modules/order).
# Idempotent: when CACHE_DIR already holds them it downloads nothing and prints where.
set -euo pipefail

usage() { sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  -*) echo "guest-kernel: unknown option $1" >&2; usage >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-$root/build/guest-kernel}
# Load order that works with busybox insmod (docs/linux-guest-tests.md): each module after
# the ones it depends on (modinfo -F depends; checked below). vsock: the AF_VSOCK core,
# the virtio transport's common half, then the virtio transport (needs virtio, virtio_ring).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover
  virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)

die() { echo "guest-kernel: ERROR: $*" >&2; exit 1; }

complete() {
  [[ -s "$cache/vmlinuz" && -s "$cache/modules/order" && -s "$cache/release" ]] || return 1
  local m
  for m in "${MODULES[@]}"; do [[ -s "$cache/modules/$m.ko" ]] || return 1; done
}

if complete; then
  echo "guest-kernel: cached in $cache ($(cat "$cache/release"))"
  exit 0
fi

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Two builds (release, asan) may run this at once: one downloads, the other waits and reuses.
exec 9>"$cache/.lock"
flock 9
if complete; then
  echo "guest-kernel: cached in $cache ($(cat "$cache/release"))"
  exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (this needs Debian or a derivative)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# apt-get download runs the fetch as the _apt user: give it a directory it can write to
# (world-writable temp dir), else apt warns and falls back to root.
work=$(mktemp -d "${TMPDIR:-/tmp}/vioport-guest-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work"

fetch() {  # fetch PACKAGE: apt-get download into $work, fail loudly
  local log="$work/apt-$1.log"
  if ! (cd "$work" && apt-get download -q "$1") >"$log" 2>&1; then
    cat "$log" >&2
    die "'apt-get download $1' failed. Check access to the Debian mirror;" \
      "if the package lists are stale, run 'apt-get update' as root."
  fi
  ls "$work"/"$1"_*.deb >/dev/null 2>&1 || { cat "$log" >&2; die "apt-get download $1 produced no .deb"; }
}

echo "guest-kernel: resolving linux-image-cloud-amd64"
fetch linux-image-cloud-amd64
meta=$(ls "$work"/linux-image-cloud-amd64_*.deb | head -1)
pkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*-cloud-amd64\).*/\1/p' | head -1)
[[ -n "$pkg" ]] ||
  die "no linux-image-*-cloud-amd64 in the Depends of $(basename "$meta"): $(dpkg-deb -f "$meta" Depends)"
echo "guest-kernel: downloading $pkg"
fetch "$pkg"
deb=$(ls "$work"/"$pkg"_*.deb | head -1)
dpkg-deb -x "$deb" "$work/x" || die "dpkg-deb -x $deb failed"

kernel=$(ls "$work"/x/boot/vmlinuz-* 2>/dev/null | head -1)
[[ -n "$kernel" ]] || die "no boot/vmlinuz-* in $pkg"
release=${kernel##*/vmlinuz-}
moddir="$work/x/lib/modules/$release/kernel"
[[ -d "$moddir" ]] || die "no lib/modules/$release/kernel in $pkg"

rm -rf "$cache/modules" "$cache/vmlinuz" "$cache/release"
mkdir -p "$cache/modules"
: >"$cache/modules/order"
for m in "${MODULES[@]}"; do
  f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
  [[ -n "$f" ]] || die "module $m not found in $pkg"
  case "$f" in
    *.ko) cp "$f" "$cache/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$cache/modules/$m.ko" || die "cannot decompress $f" ;;
    *.ko.zst) zstd -dqc "$f" >"$cache/modules/$m.ko" || die "cannot decompress $f" ;;
  esac
  echo "$m" >>"$cache/modules/order"
done
# Every dependency named in a kept module must itself be kept, earlier in the order.
for m in "${MODULES[@]}"; do
  deps=$(strings "$cache/modules/$m.ko" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')
  for d in $deps; do
    grep -qx "${d//-/_}" "$cache/modules/order" || die "module $m depends on $d, which is not in the list"
    sed "/^$m\$/q" "$cache/modules/order" | grep -qx "${d//-/_}" || die "module $m depends on $d, which comes after it"
  done
done
cp "$kernel" "$cache/vmlinuz"
echo "$release" >"$cache/release"
complete || die "internal error: cache in $cache is incomplete"
echo "guest-kernel: $release in $cache (vmlinuz, modules/: ${MODULES[*]})"
