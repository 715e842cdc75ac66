#!/usr/bin/env bash
# Builds an optimized, sanitizer-free tree and runs every benchmark. Usage: tests/bench/run.sh [scale]
# Installs missing packages with apt-get when run as root; otherwise prints the command.
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
. tests/need-packages.sh
trap 'echo "bench/run.sh: failed at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR
need_packages gcc meson ninja-build pkg-config procps libuv1-dev libcjson-dev libssl-dev \
  libsqlite3-dev || exit 2
dir=build-bench
# -Dtests=auto builds the benchmarks whether or not cmocka is there.
setup_build "$dir" --buildtype=release -Db_ndebug=true -Dtests=auto -Dsqlite=enabled || exit 2
step "the build (ninja -C $dir)" ninja -C "$dir" || exit 1
for b in "$dir"/tests/bench/engine_bench "$dir"/tests/bench/jsonl_bench "$dir"/tests/bench/exec_bench \
    "$dir"/tests/bench/socket_bench "$dir"/tests/bench/sqlite_bench; do
  [ -x "$b" ] || { echo "bench/run.sh: $b was not built" >&2; exit 1; }
  echo "# $(basename "$b")"
  "$b" "$@"
done
echo "# cli_bench"
tests/bench/cli_bench.sh "$dir"
