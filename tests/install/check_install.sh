#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# check_install.sh BUILD_DIR CONSUMER_SRC: installs BUILD_DIR into a temporary
# prefix and builds the consumer against it, once through find_package(vioport)
# and once through pkg-config. Prints what each consumer printed.
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
test -f "$tmp"/prefix/lib*/cmake/vioport/vioportConfig.cmake || { echo "no vioportConfig.cmake installed"; exit 1; }
cmake -S "$src" -B "$tmp/cmake-build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" ||
  { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/cmake-build" >"$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/cmake-build/consumer" cmake
pc_dir=$(dirname "$(ls "$tmp"/prefix/lib*/pkgconfig/vioport.pc)")
# shellcheck disable=SC2046
c++ -o "$tmp/pc-consumer" "$src/main.cc" $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs vioport)
"$tmp/pc-consumer" pkg-config
