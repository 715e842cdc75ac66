#!/usr/bin/env bash
# `stagecoach compact` with the real binary, as TAP (issue 14, item 6). A log of finished runs,
# a failed run and a run killed in the middle is compacted; then:
#  - verify passes on the result, verify --archive checks its link to the old log, and
#    `recover --dry-run` says the same of both; a recovery from the compacted log runs only the
#    stages the original still owed;
#  - a write or sync of the new log that fails (EIO, ENOSPC, a short write), at every such call,
#    and a kill -9 after every line written to it leave the old log byte for byte and nothing
#    else; the next compaction then succeeds;
#  - a running writer makes compact refuse with its pid; what is not a log is refused and left.
sc=$1 shim=$2 judge=$3
. "$(dirname "$0")/faultlib.sh"

d=$tmp/c
mkdir -p "$d"
cat >"$d/p.json" <<EOF
{"plan":"p","tenant":"t","config":{"stages":[
 {"name":"a","kind":"exec","run":"echo a >>\"\$RAN\"; echo '{\"a\":\"$(head -c 60000 /dev/zero | tr '\0' x)\"}' >\"\$SC_OUTPUT\"","env":{"RAN":"$d/ran"}},
 {"name":"b","kind":"exec","run":"echo b >>\"\$RAN\"; test -f \"\$OK\"","env":{"RAN":"$d/ran","OK":"$d/ok"}},
 {"name":"c","kind":"exec","run":"echo c >>\"\$RAN\"","env":{"RAN":"$d/ran"}}]}}
EOF
log=$d/job.jsonl
touch "$d/ok"
for _ in 1 2 3 4 5; do "$sc" run "$d/p.json" --log "$log" --plain >/dev/null 2>&1; done
rm -f "$d/ok"
"$sc" run "$d/p.json" --log "$log" --plain >/dev/null 2>&1 # fails in b: unfinished (FAILED)
# A run killed right after the stage.completed of a (the shim kills at that line).
at=$(($(wc -l <"$log") + 4))
{ env LD_PRELOAD="$shim" SC_IOFAULT_LOG="$log" SC_IOFAULT_KILL_LINE=4 \
  "$sc" run "$d/p.json" --log "$log" --plain >/dev/null 2>&1; } 2>/dev/null
lines=$(wc -l <"$log")
if [ "$lines" -ge 20 ] && "$sc" verify "$log" >/dev/null; then
  ok "a log of 5 finished runs, a failed one and a killed one ($lines lines)"
else
  fail "the starting log ($lines lines, wanted about $at)"
fi
cp "$log" "$d/orig.jsonl"
dry() { "$sc" recover "$d/p.json" --log "$1" --dry-run 2>&1 | sed 's/[0-9a-f-]\{36\}/ID/g'; }
dry "$log" >"$d/dry.orig"

# ---- compaction itself ----
if out=$("$sc" compact "$log" --archive "$d/old.jsonl" 2>&1) && cmp -s "$d/old.jsonl" "$d/orig.jsonl" &&
  [ "$(wc -l <"$log")" -lt "$lines" ]; then
  ok "compact rewrites the log and keeps the old one as the archive"
else
  fail "compact --archive" "$out"
fi
if out=$("$sc" verify "$log" --archive "$d/old.jsonl" 2>&1) && echo "$out" | grep -q "compacted from"; then
  ok "verify passes on the result and checks its link to the archive"
else
  fail "verify --archive" "$out"
fi
if ! out=$("$sc" verify "$log" --archive "$log" 2>&1); then
  ok "verify --archive refuses a log that is not the one it was compacted from"
else
  fail "verify --archive of the log itself passed" "$out"
fi
dry "$log" >"$d/dry.new"
if cmp -s "$d/dry.orig" "$d/dry.new" && [ -s "$d/dry.new" ]; then
  ok "recover --dry-run says the same of the compacted log as of the original"
else
  fail "the dry runs differ" "$(diff "$d/dry.orig" "$d/dry.new")"
fi
cp "$log" "$d/compacted.jsonl"
if out=$("$sc" compact "$log" 2>&1) && echo "$out" | grep -q "nothing to compact" &&
  cmp -s "$log" "$d/compacted.jsonl"; then
  ok "compacting twice changes nothing the second time"
else
  fail "the second compaction" "$out"
fi
touch "$d/ok"
: >"$d/ran"
"$sc" recover "$d/p.json" --log "$log" --plain >"$d/out" 2>&1
status=$?
ran=$(tr '\n' ' ' <"$d/ran")
# The failed run re-runs b and c; the killed one (a completed) runs b and c.
if [ $status = 0 ] && [ "$ran" = "b c b c " ] && "$sc" verify "$log" >/dev/null &&
  "$sc" recover "$d/p.json" --log "$log" --dry-run 2>&1 | grep -q "nothing to recover"; then
  ok "a recovery from the compacted log runs only what the original owed"
else
  fail "recovery from the compacted log (exit $status, ran: $ran)" "$(tail -5 "$d/out")"
fi

# ---- failures: every write and sync of the new log, and a kill after every line ----
tmpname=$log.compacting
same_old() { cmp -s "$log" "$d/orig.jsonl" && [ ! -e "$tmpname" ] && [ ! -e "$d/arch.jsonl" ]; }
calls=$(
  cp "$d/orig.jsonl" "$log"
  env LD_PRELOAD="$shim" SC_IOFAULT_LOG="$tmpname" SC_IOFAULT_TRACE="$d/trace" \
    "$sc" compact "$log" --keep-finished 1h --archive "$d/arch.jsonl" >/dev/null 2>&1
  rm -f "$d/arch.jsonl"
  grep -c '^[0-9]' "$d/trace"
)
bad=""
for variant in EIO ENOSPC SHORT; do
  for k in $(seq 1 "$calls"); do
    cp "$d/orig.jsonl" "$log"
    rm -f "$d/arch.jsonl"
    set -- SC_IOFAULT_FAIL="$k"
    [ $variant = ENOSPC ] && set -- "$@" SC_IOFAULT_ERRNO=ENOSPC
    [ $variant = SHORT ] && set -- "$@" SC_IOFAULT_ERRNO=ENOSPC SC_IOFAULT_SHORT=1
    env LD_PRELOAD="$shim" SC_IOFAULT_LOG="$tmpname" "$@" \
      "$sc" compact "$log" --keep-finished 1h --archive "$d/arch.jsonl" >"$d/out" 2>&1
    status=$?
    if [ "$k" = "$calls" ]; then
      # The last call is the directory's sync after the rename: the new log is in place, the
      # command says so and fails; the archive is the old log.
      if [ $status != 1 ] || ! grep -q "fsync (the directory of) .*; the compacted log is in place" "$d/out" ||
        ! cmp -s "$d/arch.jsonl" "$d/orig.jsonl" || ! "$sc" verify "$log" >/dev/null; then
        bad="$bad $variant@$k(last, exit $status)"
      fi
      continue
    fi
    if [ $status != 1 ] || ! same_old; then
      bad="$bad $variant@$k(exit $status)"
      continue
    fi
    if ! "$sc" compact "$log" >/dev/null 2>&1 || ! "$sc" verify "$log" >/dev/null; then
      bad="$bad $variant@$k(again)"
    fi
  done
done
if [ -z "$bad" ] && [ "$calls" -ge 3 ]; then
  ok "a failed write or sync at each of the $calls calls (EIO, ENOSPC, short) leaves the old log (the directory sync after the rename: the new one, said so)"
else
  fail "failed writes and syncs:$bad (calls: $calls)" "$(cat "$d/out")"
fi
newlines=$(wc -l <"$d/compacted.jsonl")
bad=""
for k in $(seq 1 "$newlines"); do
  cp "$d/orig.jsonl" "$log"
  rm -f "$d/arch.jsonl"
  { env LD_PRELOAD="$shim" SC_IOFAULT_LOG="$tmpname" SC_IOFAULT_KILL_LINE="$k" \
    "$sc" compact "$log" >/dev/null 2>&1; } 2>/dev/null
  status=$?
  # The shim kills after the Nth line; the new log's last line is written with the others, so
  # the kill comes before the rename.
  if [ $status != 137 ] || ! cmp -s "$log" "$d/orig.jsonl"; then
    bad="$bad $k(exit $status)"
    continue
  fi
  dry "$log" >"$d/dry.k"
  if ! "$sc" compact "$log" >/dev/null 2>&1 || [ -e "$tmpname" ] || ! "$sc" verify "$log" >/dev/null ||
    ! cmp -s "$d/dry.orig" "$d/dry.k"; then
    bad="$bad $k(again)"
  fi
done
if [ -z "$bad" ]; then
  ok "a kill -9 after each of the $newlines lines of the new log leaves the old one; compact then finishes"
else
  fail "kill -9 while writing:$bad"
fi

# ---- the lock, and what is not a log ----
cp "$d/orig.jsonl" "$log"
cat >"$d/slow.json" <<EOF
{"config":{"stages":[{"name":"wait","kind":"exec","run":"sleep 3"}]}}
EOF
"$sc" run "$d/slow.json" --log "$log" --plain >/dev/null 2>&1 &
writer=$!
started_pids+=("$writer")
for _ in $(seq 1 200); do grep -q "\"stage\":\"wait\"" "$log" 2>/dev/null && break; sleep 0.02; done
cp "$log" "$d/busy.before"
out=$("$sc" compact "$log" 2>&1)
status=$?
if [ $status = 1 ] && echo "$out" | grep -q "locked by pid $writer" && cmp -s "$log" "$d/busy.before"; then
  ok "a running writer makes compact refuse with its pid, and the log is untouched"
else
  fail "compact beside a writer $writer (exit $status)" "$out" "$(ps -o pid,ppid,cmd -e | grep -v grep | grep stagecoach)"
fi
wait "$writer"
# A writer that opened the log just before a compaction renamed the new one over it, and locks
# it after: it must not append to the old file (no longer the log) but open the log again.
cp "$d/orig.jsonl" "$log"
rm -f "$d/arch2.jsonl" "$d/hold/held" "$d/hold/release"
mkdir -p "$d/hold"
printf '{"config":{"stages":[{"name":"q","kind":"exec","run":"true"}]}}\n' >"$d/quick.json"
{ env LD_PRELOAD="$shim" SC_IOFAULT_LOG="$log" SC_IOFAULT_HOLD=lock SC_IOFAULT_HOLD_DIR="$d/hold" \
  "$sc" run "$d/quick.json" --log "$log" --task-id late --plain >"$d/late.out" 2>&1; } 2>/dev/null &
late=$!
started_pids+=("$late")
for _ in $(seq 1 1000); do [ -s "$d/hold/held" ] && break; sleep 0.01; done
"$sc" compact "$log" --archive "$d/arch2.jsonl" >"$d/out" 2>&1
cstatus=$?
touch "$d/hold/release"
wait "$late"
status=$?
if [ -s "$d/hold/held" ] && [ $cstatus = 0 ] && [ $status = 0 ] && "$sc" verify "$log" >/dev/null &&
  grep -q '"taskid":"late"' "$log" && ! grep -q '"taskid":"late"' "$d/arch2.jsonl" &&
  cmp -s "$d/arch2.jsonl" "$d/orig.jsonl"; then
  ok "a writer that opened the log before the rename and locked it after writes to the new log"
else
  fail "a writer held before its lock across a compaction (compact $cstatus, run $status)" \
    "$(cat "$d/out" "$d/late.out")"
fi
printf '{"config":{"stages":[]}}\n' >"$d/pipeline.json"
cp "$d/pipeline.json" "$d/pipeline.before"
out=$("$sc" compact "$d/pipeline.json" 2>&1)
status=$?
if [ $status = 2 ] && cmp -s "$d/pipeline.json" "$d/pipeline.before" && echo "$out" | grep -q "not a stagecoach log"; then
  ok "a file that is not a log is refused and left as it is"
else
  fail "compact of a pipeline file (exit $status)" "$out"
fi
out=$("$sc" compact "$d/missing.jsonl" 2>&1)
status=$?
if [ $status = 2 ] && [ ! -e "$d/missing.jsonl" ]; then ok "a missing log is an input error"; else fail "missing log (exit $status)" "$out"; fi
out=$("$sc" compact "$log" --keep-finished 12x 2>&1)
if [ $? = 2 ] && echo "$out" | grep -q "duration"; then ok "a bad duration is a usage error"; else fail "bad duration" "$out"; fi
# ---- what the review found: wrong files, planted names, messages ----
cp "$d/orig.jsonl" "$log"
echo precious >"$d/victim.txt"
ln -s "$d/victim.txt" "$log.compacting"
out=$("$sc" compact "$log" 2>&1)
status=$?
if [ $status = 2 ] && [ "$(cat "$d/victim.txt")" = precious ] && [ -f "$log" ] && [ ! -L "$log" ] &&
  cmp -s "$log" "$d/orig.jsonl" && echo "$out" | grep -q "symbolic link"; then
  ok "a link planted at LOG.compacting is refused, never written through"
else
  fail "a planted link (exit $status)" "$out"
fi
rm -f "$log.compacting"
out=$("$sc" compact "$log" --archive "$log.compacting" 2>&1)
status=$?
if [ $status = 2 ] && cmp -s "$log" "$d/orig.jsonl" && [ ! -e "$log.compacting" ]; then
  ok "the archive may not be the name the new log is written under"
else
  fail "--archive LOG.compacting (exit $status)" "$out"
fi
mkdir -p "$d/adir"
out=$("$sc" compact "$d/adir" 2>&1)
status=$?
if [ $status = 2 ] && echo "$out" | grep -q "not a stagecoach log (a directory)"; then
  ok "a directory is no log (exit 2)"
else
  fail "compact of a directory (exit $status)" "$out"
fi
out=$(echo x | "$sc" compact /dev/stdin 2>&1)
status=$?
if [ $status = 2 ] && ! echo "$out" | grep -q "compact: compact:" && echo "$out" | grep -q "a FIFO"; then
  ok "a pipe is no log, and the message says so once"
else
  fail "compact /dev/stdin from a pipe (exit $status)" "$out"
fi
echo mine >"$d/taken"
out=$("$sc" compact "$log" --archive "$d/taken" 2>&1)
status=$?
if [ $status = 2 ] && ! echo "$out" | grep -q "compact: compact:" && cmp -s "$log" "$d/orig.jsonl"; then
  ok "an archive name that exists is refused with one prefix"
else
  fail "an existing archive (exit $status)" "$out"
fi
"$sc" compact "$log" >/dev/null 2>&1
rm -f "$d/none.jsonl"
out=$("$sc" compact "$log" --archive "$d/none.jsonl" 2>&1)
status=$?
if [ $status = 0 ] && [ ! -e "$d/none.jsonl" ] && echo "$out" | grep -q "no archive was made"; then
  ok "with nothing to drop, compact says that no archive was made"
else
  fail "--archive with nothing to drop (exit $status)" "$out"
fi
cp "$d/orig.jsonl" "$log"
out=$("$sc" compact "$log" 2>&1 >/dev/full)
status=$?
if [ $status = 1 ] && echo "$out" | grep -q "writing this summary failed"; then
  ok "a summary that cannot be written makes compact fail"
else
  fail "compact >/dev/full (exit $status)" "$out"
fi
log3=$d/reuse.jsonl
rm -f "$log3"
"$sc" run "$d/quick.json" --log "$log3" --task-id order-17 --plain >/dev/null 2>&1
"$sc" run "$d/quick.json" --log "$log3" --task-id order-18 --plain >/dev/null 2>&1
"$sc" compact "$log3" >/dev/null 2>&1
"$sc" run "$d/quick.json" --log "$log3" --task-id order-19 --plain >/dev/null 2>&1
"$sc" compact "$log3" >/dev/null 2>&1 # the second compaction carries the first one's ids on
out=$("$sc" run "$d/quick.json" --log "$log3" --task-id order-17 --plain 2>&1)
status=$?
out2=$("$sc" run "$d/quick.json" --log "$log3" --task-id order-19 --plain 2>&1)
status2=$?
if [ $status = 2 ] && [ $status2 = 2 ] && echo "$out" | grep -q "already in" &&
  ! grep -q '"taskid":"order-17"' "$log3" &&
  "$sc" run "$d/quick.json" --log "$log3" --task-id order-20 --plain >/dev/null 2>&1; then
  ok "an id whose lines compaction dropped is still refused for a new run (its keys would repeat)"
else
  fail "reusing a compacted-away id (exit $status, $status2)" "$out" "$out2"
fi
echo "1..$n"
[ $violations = 0 ]
