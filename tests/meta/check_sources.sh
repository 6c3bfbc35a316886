#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checks the source tree's rules that no compiler checks:
#   spdx  every source file (C++, CMake, shell, Python) says its license in an
#         SPDX line at the top (Apache-2.0; GPL-2.0 under kernel/ folders)
#   seam  vios/ and guest/tool/ name no transport and no hypervisor (they
#         compose transports through the registry), and the code of core/
#         and backends/ names no hypervisor (comments may, as examples)
#   check_sources.sh spdx|seam SOURCE_DIR
set -euo pipefail
what=$1
cd "$2"
files() { git ls-files "$@" 2>/dev/null || find "$@" -type f; }
fail=0
case $what in
  spdx)
    while IFS= read -r f; do
      case $f in
        *.cc | *.h | *.c) ;;
        *CMakeLists.txt | *.cmake | *.sh | *.py | .ci/run) ;;
        *) continue ;;
      esac
      want=Apache-2.0
      [[ $f == */kernel/* ]] && want=GPL-2.0
      head -3 "$f" | grep -q "SPDX-License-Identifier: $want\b" ||
        { echo "no 'SPDX-License-Identifier: $want' line at the top of $f"; fail=1; }
    done < <(files . | grep -v '^tests/fuzz/corpus/')
    ;;
  seam)
    names='loopback|shm|vhost[-_ ]?user|crq|xen|kvm|powervm|qemu|hypervisor'
    for f in $(files vios guest/tool | grep -E '\.(cc|h)$|CMakeLists\.txt$'); do
      if grep -nEi "(^|[^a-z])($names)" "$f"; then
        echo "^ $f names a transport or hypervisor: vios and vioguest must reach transports through the registry"
        fail=1
      fi
    done
    for f in $(files core backends | grep -E '\.(cc|h)$|CMakeLists\.txt$'); do
      # Code only: comments may name a hypervisor as an example.
      if sed 's://.*$::; s:^ *#.*$::' "$f" | grep -nEi "(^|[^a-z])(xen|crq|kvm|powervm|vhost|qemu)"; then
        echo "^ $f names a hypervisor in code: core and backends must not know one"
        fail=1
      fi
    done
    ;;
  *) echo "usage: check_sources.sh spdx|seam SOURCE_DIR" >&2; exit 2 ;;
esac
[[ $fail -eq 0 ]] && echo "$what: ok"
exit $fail
