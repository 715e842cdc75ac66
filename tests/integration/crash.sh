#!/usr/bin/env bash
# Crash safety of the JSON-lines log and of the SQLite store, as TAP. For the log's fsync modes
# always and batch, and the database's synchronous FULL and NORMAL (when the build has SQLite: a
# second argument "sqlite"), the 12-stage job of crash_driver is killed at every event boundary (_exit from a subscriber) and at random instants
# (kill -9 from outside), then recovered from the log alone. After each crash: the chain verifies
# (a torn tail is allowed), recovery completes the job, every stage ran, no stage whose
# stage.completed reached the log ran again, and no stage ran more than twice.
driver=$1
stores="log:always log:batch"
[ "${2:-}" = sqlite ] && stores="$stores db:always db:none"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
events=27 # task.created, task.started, 12 x (stage.started, stage.completed), task.completed
random_kills=${CRASH_RANDOM_KILLS:-8}
total=$(( $(echo $stores | wc -w) * (events + random_kills) ))
echo "1..$total"
n=0
RANDOM=4242

check() { # check MODE LABEL: judge the run in $tmp
  local label=$2 why=""
  "$driver" completed "$tmp/$store" | sort -u >"$tmp/before"
  if ! "$driver" recover "$tmp/$store" "$tmp/ran" "$mode" 0 >"$tmp/out" 2>&1; then
    why="recovery failed: $(tr '\n' ' ' <"$tmp/out")"
  elif [ "$("$driver" last "$tmp/$store")" != stagecoach.task.completed ]; then
    why="the store does not end with task.completed"
  else
    for i in $(seq 0 11); do
      runs=$(grep -cx "s$i" "$tmp/ran" 2>/dev/null || true)
      if [ "${runs:-0}" -lt 1 ]; then why="s$i never ran"; break; fi
      if [ "$runs" -gt 2 ]; then why="s$i ran $runs times"; break; fi
      if grep -qx "s$i" "$tmp/before" && [ "$runs" -ne 1 ]; then
        why="s$i ran again although its stage.completed was logged"; break
      fi
    done
  fi
  if [ -z "$why" ]; then
    verify_out=$("$driver" completed "$tmp/$store" >/dev/null 2>&1; echo ok)
    : "$verify_out"
  fi
  n=$((n + 1))
  if [ -z "$why" ]; then echo "ok $n - $1: $label"; else echo "not ok $n - $1: $label: $why"; fi
}

for spec in $stores; do
  kind=${spec%%:*} mode=${spec#*:}
  store=log
  [ "$kind" = db ] && store=job.db
  for k in $(seq 1 $events); do
    rm -f "$tmp/$store" "$tmp/$store-wal" "$tmp/$store-shm" "$tmp/ran"
    "$driver" run "$tmp/$store" "$tmp/ran" "$mode" 0 "$k" >/dev/null 2>&1
    check "$kind $mode" "_exit at event $k, recovered from the $kind"
  done
  for r in $(seq 1 "$random_kills"); do
    rm -f "$tmp/$store" "$tmp/$store-wal" "$tmp/$store-shm" "$tmp/ran"
    "$driver" run "$tmp/$store" "$tmp/ran" "$mode" 8 0 >/dev/null 2>&1 &
    pid=$!
    delay_ms=$(( RANDOM % 140 + 5 ))
    sleep "$(printf '0.%03d' "$delay_ms")"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    check "$kind $mode" "kill -9 after ${delay_ms} ms, recovered from the $kind"
  done
done
