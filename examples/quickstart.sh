#!/usr/bin/env bash
# The quickstart: builds stagecoach, runs the tenant deploy pipeline of examples/deploy/ with a
# durable log, kills it with SIGKILL in the middle of the deploy stage, recovers it from the log
# with `stagecoach recover`, and shows the timeline with `stagecoach events`.
# Installs missing packages with apt-get when run as root; otherwise prints the command.
# Needs only what the library and the command need; the test packages are tests/run.sh's business
# (without cmocka, the build folder simply has no tests). Any step that fails says so.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
. tests/need-packages.sh
trap 'echo "quickstart.sh: failed at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR
need_packages gcc meson ninja-build pkg-config procps libuv1-dev libcjson-dev libssl-dev \
  libsqlite3-dev || exit 2
setup_build build || exit 2
step "the build (ninja -C build)" ninja -C build || exit 1
sc=./build/stagecoach

export DEPLOY_ROOT
DEPLOY_ROOT=$(mktemp -d)
# The stages' working files too, so that the run killed below leaves nothing elsewhere.
export TMPDIR=$DEPLOY_ROOT
log="$DEPLOY_ROOT/deploy.jsonl"
trap 'rm -rf "$DEPLOY_ROOT"' EXIT

echo "== stagecoach validate examples/deploy/pipeline.json"
$sc validate examples/deploy/pipeline.json
echo
echo "== stagecoach run examples/deploy/pipeline.json --log $log --plain --no-prompt"
echo "   (killed with SIGKILL once the deploy stage is half done)"
$sc run examples/deploy/pipeline.json --log "$log" --plain --no-prompt &
pid=$!
started=0
for _ in $(seq 1 200); do
  grep -q '"type":"stagecoach.stage.started".*"stage":"deploy"' "$log" 2>/dev/null && { started=1; break; }
  sleep 0.05
done
if [ $started = 0 ]; then
  echo "quickstart.sh: the deploy stage did not start within 10 s; the log so far:" >&2
  sed 's/^/  | /' "$log" >&2 2>/dev/null || true
  kill -9 "$pid" 2>/dev/null || true
  exit 1
fi
sleep 1
# The deploy script runs in its own process group, led by the shell stagecoach started.
group=$(ps -o pid= --ppid "$pid" | head -n 1 | tr -d ' ')
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
# After a real crash that group would be an orphan; here we end it, by its id.
[ -n "$group" ] && kill -9 -- "-$group" 2>/dev/null || true
echo
echo "== killed. stagecoach verify $log"
$sc verify "$log"
echo
echo "== stagecoach recover examples/deploy/pipeline.json --log $log --dry-run"
$sc recover examples/deploy/pipeline.json --log "$log" --dry-run
echo
echo "== stagecoach recover examples/deploy/pipeline.json --log $log --plain --no-prompt"
echo "   (the switch stage asks for approval; with --no-prompt its 3 s timeout approves it)"
$sc recover examples/deploy/pipeline.json --log "$log" --plain --no-prompt
echo
echo "== stagecoach events $log"
$sc events "$log"
echo
echo "== live: $(cat "$DEPLOY_ROOT/current/app/VERSION"); migrations applied once each:"
sed 's/^/   /' "$DEPLOY_ROOT/db/schema"
