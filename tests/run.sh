#!/usr/bin/env bash
# Runs every test of stagecoach: builds with AddressSanitizer and UndefinedBehaviorSanitizer,
# runs the cmocka unit tests, the examples and the integration tests, checks the formatting, and
# ends with one line "N passed, N failed" counted from the individual test cases.
# Installs missing packages with apt-get when run as root; otherwise prints the command.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

. "$root/tests/need-packages.sh"
need_packages gcc g++ meson ninja-build pkg-config python3 procps libuv1-dev libcjson-dev \
  libssl-dev libcmocka-dev libsqlite3-dev clang-format strace || { echo "0 passed, 1 failed"; exit 2; }

build=${STAGECOACH_TEST_BUILD:-build-test}
# meson's "undefined" leaves out the floating-point checks; a double cast out of range is a bug here.
ubsan_extra=-fsanitize=float-cast-overflow,float-divide-by-zero
# -Dtests=enabled: here a missing cmocka is an error, not a build without tests.
setup_build "$build" -Dtests=enabled -Dsqlite=enabled -Db_sanitize=address,undefined "-Dc_args=$ubsan_extra" \
  "-Dc_link_args=$ubsan_extra" --buildtype=debugoptimized || { echo "0 passed, 1 failed"; exit 2; }
step "the build (ninja -C $build)" ninja -C "$build" || { echo "0 passed, 1 failed"; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
meson test -C "$build" --print-errorlogs --num-processes 2 "$@"
status=$?

# Formatting is part of the suite: the checked-in .clang-format is the house style.
format_failed=0
if command -v clang-format >/dev/null; then
  bad=$(git ls-files '*.c' '*.h' 2>/dev/null | while read -r f; do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || echo "$f"; done)
  if [ -n "$bad" ]; then
    echo "run.sh: not in the .clang-format style:"; echo "$bad" | sed 's/^/  /'
    format_failed=1
  fi
fi

python3 "$root/tests/summarize.py" "$build/meson-logs/testlog.json" "$format_failed"
summary=$?
[ $status -eq 0 ] && [ $summary -eq 0 ]
