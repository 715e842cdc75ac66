#!/usr/bin/env bash
# The examples run as users run them: logged starts a job with a log, is killed with SIGKILL,
# recovers on its next start and prints a timeline whose chain verifies.
logged=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "1..3"
"$logged" "$tmp/log.jsonl" >"$tmp/out1" 2>&1 &
pid=$!
sleep 1
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
if "$logged" "$tmp/log.jsonl" >"$tmp/out2" 2>&1 && grep -q "^recovering " "$tmp/out2"; then
  echo "ok 1 - logged recovers the job it was running when killed"
else
  echo "not ok 1 - logged recovers the job it was running when killed"; sed 's/^/# /' "$tmp/out2"
fi
if "$logged" "$tmp/log.jsonl" --timeline >"$tmp/out3" 2>&1 && grep -q "chain verified" "$tmp/out3" &&
   grep -q "e1 .*task.completed" "$tmp/out3"; then
  echo "ok 2 - its timeline verifies and ends with the recovered task completed"
else
  echo "not ok 2 - timeline"; sed 's/^/# /' "$tmp/out3"
fi
if "$logged" "$tmp/log.jsonl" >"$tmp/out4" 2>&1 && grep -q "^started task" "$tmp/out4"; then
  echo "ok 3 - with nothing unfinished it starts a new job"
else
  echo "not ok 3 - with nothing unfinished it starts a new job"; sed 's/^/# /' "$tmp/out4"
fi
