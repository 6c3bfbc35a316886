#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the Linux-guest test initramfs (an uncompressed newc cpio):
#   mkinitramfs.sh --kernel DIR --init FILE --out FILE [--data DIR] [--bin PROGRAM]...
# DIR (from scripts/guest-kernel.sh) provides modules/*.ko and modules/order; FILE
# becomes /init; the static busybox becomes /bin/busybox. --data DIR is added as
# /data (a second archive appended to the first; Linux unpacks both). Each --bin
# PROGRAM (a static executable, e.g. tests/linux/vsock_peer.c built) becomes /bin/NAME.
set -euo pipefail

usage() { sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
kernel="" init="" out="" data=""
bins=()
while (($#)); do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --init) init=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "mkinitramfs: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
die() { echo "mkinitramfs: ERROR: $*" >&2; exit 1; }
[[ -n "$kernel" && -n "$init" && -n "$out" ]] || { usage >&2; exit 2; }
[[ -s "$kernel/modules/order" ]] || die "$kernel/modules/order missing (run scripts/guest-kernel.sh)"
[[ -f "$init" ]] || die "init script $init missing"
command -v cpio >/dev/null || die "cpio not installed (scripts/install-deps.sh)"
busybox=${VIOPORT_BUSYBOX:-/bin/busybox}
[[ -x "$busybox" ]] || die "$busybox not found (install busybox-static)"
# The initramfs has no libraries: busybox must be static (Debian's busybox-static is).
if command -v file >/dev/null && ! file -L "$busybox" | grep -Eq 'statically linked|static-pie linked'; then
  die "$busybox is not statically linked (install busybox-static)"
fi

stage=$(mktemp -d "${out}.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,mnt,modules}
cp "$busybox" "$stage/bin/busybox"
cp "$init" "$stage/init"
chmod 0755 "$stage/init" "$stage/bin/busybox"
for b in "${bins[@]}"; do
  [[ -x "$b" ]] || die "program $b missing or not executable"
  cp "$b" "$stage/bin/$(basename "$b")" && chmod 0755 "$stage/bin/$(basename "$b")"
done
while read -r m; do
  [[ -n "$m" ]] || continue
  cp "$kernel/modules/$m.ko" "$stage/modules/" || die "module $m.ko missing in $kernel/modules"
done <"$kernel/modules/order"
cp "$kernel/modules/order" "$stage/modules/order"

tmp="$out.tmp.$$"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$tmp"
if [[ -n "$data" ]]; then
  [[ -d "$data" ]] || die "data directory $data missing"
  # Files become /data/<name>: archive them from the parent with the directory renamed.
  mkdir "$stage/.d" && ln -s "$(cd "$data" && pwd)" "$stage/.d/data"
  (cd "$stage/.d" && { echo data; find -L data -mindepth 1 | LC_ALL=C sort; } |
    cpio --quiet -o -H newc -R 0:0 --dereference) >>"$tmp"
fi
mv "$tmp" "$out"
