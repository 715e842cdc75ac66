#!/usr/bin/env bash
# Builds an optimized, sanitizer-free tree and runs every benchmark. Usage: tests/bench/run.sh [scale]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=build-bench
if [ ! -d "$dir" ]; then
  meson setup "$dir" --buildtype=release -Db_ndebug=true >/dev/null
fi
ninja -C "$dir" >/dev/null
for b in "$dir"/tests/bench/engine_bench "$dir"/tests/bench/jsonl_bench "$dir"/tests/bench/exec_bench; do
  [ -x "$b" ] || continue
  echo "# $(basename "$b")"
  "$b" "$@"
done
if [ -x "$dir/stagecoach" ]; then
  echo "# cli_bench"
  tests/bench/cli_bench.sh "$dir"
fi
