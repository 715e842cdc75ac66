#!/usr/bin/env bash
# The main job: a deploy-like job that logs every event to a JSON-lines file is killed with SIGKILL
# in the middle of a stage, then started again: it recovers from the log alone and finishes. The
# timeline of the log is printed at the end. Installs missing packages with apt-get when run as
# root; otherwise prints the command.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/need-packages.sh
need_packages gcc meson ninja-build pkg-config libuv1-dev libcjson-dev libssl-dev libsqlite3-dev || exit 2
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null

work=$(mktemp -d)
log="$work/deploy.jsonl"
echo "== run: the job logs to $log; it is killed with SIGKILL after 1.3 s"
./build/examples/logged "$log" &
pid=$!
sleep 1.3
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "== killed. The last line the log holds:"
tail -n 1 "$log" | cut -c1-160
echo "..."
echo "== start again: it recovers what the log says is unfinished"
./build/examples/logged "$log"
echo "== the timeline (two epochs: the first run and the recovered one)"
./build/examples/logged "$log" --timeline
rm -rf "$work"
