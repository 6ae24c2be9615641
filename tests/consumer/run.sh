#!/usr/bin/env bash
# Installs difflsq from build dir $1 into a scratch prefix and builds and runs the consumer.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)
prefix=$build/consumer-install
rm -rf "$prefix" "$build/consumer-build"
cmake --install "$build" --prefix "$prefix" --component Unspecified > /dev/null
cmake -S "$src" -B "$build/consumer-build" -DCMAKE_PREFIX_PATH="$prefix" > /dev/null
cmake --build "$build/consumer-build" > /dev/null
"$build/consumer-build/consumer"
