#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Lines per transport (wc -l of its sources and headers, comments and blank
# lines included): its folder, split into device half, guest half and the
# rest (protocol, channel port, registration), and the emulator code a
# process of that transport links to reach its channel. docs/porting-guide.md
# records the output.
#   scripts/transport-lines.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '3,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
lines() { if [[ $# -gt 0 ]]; then cat "$@" | wc -l; else echo 0; fi; }
files() { find "$@" -type f \( -name '*.cc' -o -name '*.h' \) 2>/dev/null | sort; }
printf '%-11s %7s %7s %7s %7s %9s\n' transport total device guest other "emulator"
for dir in transports/*/; do
  t=$(basename "$dir")
  [[ $t == common ]] && continue
  mapfile -t all < <(files "$dir")
  mapfile -t dev < <(printf '%s\n' "${all[@]}" | grep -E '/[^/]*(server|session|_host|copy_memory|grant_memory|backend)[^/]*\.(cc|h)$' || true)
  mapfile -t gst < <(printf '%s\n' "${all[@]}" | grep -E '/[^/]*(guest|frontend)[^/]*\.(cc|h)$' || true)
  total=$(lines "${all[@]}")
  d=$(lines "${dev[@]}")
  g=$(lines "${gst[@]}")
  # The emulator's implementation of the channel port (what vios and
  # vioguest link to reach the emulator), where the transport has one.
  case $t in
    crq) emu=$(lines emulators/crq/src/crq_remote.cc emulators/crq/include/vioport/emulators/crq_remote.h) ;;
    xen) emu=$(lines emulators/xen/src/xen_emu_channel.cc emulators/xen/include/vioport/emulators/xen_emu_channel.h \
                 emulators/xen/src/xen_remote.cc emulators/xen/include/vioport/emulators/xen_remote.h) ;;
    *) emu=0 ;;
  esac
  printf '%-11s %7d %7d %7d %7d %9d\n' "$t" "$total" "$d" "$g" $((total - d - g)) "$emu"
done
printf '%-11s %7d   (shared by every transport: registry, options, fds, DeviceLoop, endpoints)\n' common \
  "$(lines $(files transports/common))"
# Outside transports/ a transport has no code: vios/ and guest/tool/ reach
# it through the registry (ctest meta.seam checks they name none).
