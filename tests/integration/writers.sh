#!/usr/bin/env bash
# Two writers on one log, as TAP (issue 10). The reference job (faultcheck.py pipeline) is killed
# right after s3's stage.completed, and two processes want to carry it on.
#  - `recover` and `run` on an existing log hold its lock before they read a byte of it.
#  - Deterministic: the iofault shim holds process B at a chosen point while process A recovers:
#    right after B opened the log, or just before B locks it (both before B reads a byte), A is
#    the writer: it completes the job, and B, let go, finds nothing to recover and writes nothing.
#    Held right after B locked the log, B is the writer: A (a recover, then a run) is refused with
#    "locked by pid <B>" and changes nothing, and B completes the job.
#  - Concurrent: 20 pairs of `stagecoach recover` started at once on a 50 MB log (copies of the
#    finished job, then the killed one): each time exactly one of them recovers the job, the other
#    is refused with "locked by pid <the writer>" (or, had it come after the writer ended, finds
#    nothing to recover), both leave a log whose chain verifies, and no stage runs twice.
sc=$1 shim=$2 judge=$3
. "$(dirname "$0")/faultlib.sh"

pairs=${WRITERS_PAIRS:-20}
mode=batch
small=$tmp/small big=$tmp/big

# The finished job, and the job killed after s3, kept in $small.
fresh_job
"$sc" run "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/out" 2>&1
cp "$job/log" "$tmp/done.log"
at=$(python3 "$judge" line "$job/log" stage.completed s3)
fresh_job
sc_shim SC_IOFAULT_KILL_LINE="$at" -- run "$job/p.json" --log "$job/log" --no-prompt --plain
status=$?
stages_gone
rm -rf "$small"; cp -r "$job" "$small"
if [ $status = 137 ] && [ "$(tr '\n' ' ' <"$job/ran")" = "s0 s1 s2 s3 " ]; then
  ok "the job killed after s3's stage.completed is the starting point"
else
  fail "the job killed after s3 (exit $status, ran: $(tr '\n' ' ' <"$job/ran"))" "$(tail -n 5 "$job/out")"
fi

restore() { rm -rf "$job"; cp -r "$1" "$job"; : >"$job/snaps"; mkdir -p "$job/hold"; }

# A writer locks the log before it reads a byte of it (the shim traces reads and maps of the log
# and the moment the lock is held).
for cmd in recover run; do
  restore "$small"
  sc_shim SC_IOFAULT_TRACE="$job/rtrace" -- $cmd "$job/p.json" --log "$job/log" --no-prompt --plain
  status=$?
  first_lock=$(grep -n -m 1 '^- locked' "$job/rtrace" | cut -d: -f1)
  first_read=$(grep -n -m 1 '^- read' "$job/rtrace" | cut -d: -f1)
  if [ $status = 0 ] && [ -n "$first_lock" ] && [ -n "$first_read" ] && [ "$first_lock" -lt "$first_read" ]; then
    ok "$cmd on an existing log holds the lock before its first read of it"
  else
    fail "$cmd on an existing log: exit $status, lock at trace line ${first_lock:-never}, first read at ${first_read:-never}" \
      "$(head -n 8 "$job/rtrace")" "$(tail -n 4 "$job/out")"
  fi
done

# hold_b WHERE: start B held at WHERE; sets b_job (its background job) and b_pid (from the shim).
hold_b() {
  out_file=$job/outB sc_shim SC_IOFAULT_HOLD="$1" SC_IOFAULT_HOLD_DIR="$job/hold" -- \
    recover "$job/p.json" --log "$job/log" --fsync $mode --no-prompt --plain &
  b_job=$!
  started_pids+=("$b_job")
  b_pid=""
  for _ in $(seq 1 1000); do
    [ -s "$job/hold/held" ] && { b_pid=$(cat "$job/hold/held"); return 0; }
    kill -0 $b_job 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}

release_b() { touch "$job/hold/release"; wait "$b_job"; }

for where in open lock; do
  label="B held right after it $([ $where = open ] && echo opened || echo "is about to lock") the log"
  restore "$small"
  if ! hold_b $where; then
    release_b
    fail "$label: B never got there" "$(tail -n 5 "$job/outB")"
    continue
  fi
  continue_job $mode
  a_status=$?
  cp "$job/log" "$job/log.a"
  cp "$job/ran" "$job/ran.a"
  release_b
  b_status=$?
  why=""
  if [ $a_status != 0 ]; then
    why="A exits $a_status"
  elif [ $b_status != 0 ]; then
    why="B, let go after A finished, exits $b_status"
  elif ! cmp -s "$job/log" "$job/log.a"; then
    why="B wrote to the log after A had finished the job"
  elif ! cmp -s "$job/ran" "$job/ran.a"; then
    why="B ran stages after A had finished the job: $(tr '\n' ' ' <"$job/ran")"
  else
    finish_checks 1
  fi
  if [ -z "$why" ]; then ok "$label: A recovers, B finds nothing and writes nothing"; else
    fail "$label: $why" "A:" "$(tail -n 6 "$job/out")" "B:" "$(tail -n 6 "$job/outB")"; fi
done

label="B held right after it locked the log"
restore "$small"
if hold_b locked; then
  cp "$job/log" "$job/log.b"
  refusals=""
  for cmd in recover run; do
    if [ $cmd = recover ]; then
      "$sc" recover "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/outA" 2>&1
    else
      "$sc" run "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/outA" 2>&1
    fi
    a_status=$?
    if [ $a_status = 0 ] || [ $a_status -ge 128 ]; then
      fail "$label: A's $cmd exits $a_status" "$(tail -n 6 "$job/outA")"
    elif ! grep -q "locked by pid $b_pid\b" "$job/outA"; then
      fail "$label: A's $cmd does not say \"locked by pid $b_pid\"" "$(tail -n 6 "$job/outA")"
    elif ! cmp -s "$job/log" "$job/log.b" || [ "$(tr '\n' ' ' <"$job/ran")" != "s0 s1 s2 s3 " ]; then
      fail "$label: A's refused $cmd changed the log or ran a stage" "$(tail -n 6 "$job/outA")"
    else
      ok "$label: A's $cmd is refused with \"locked by pid $b_pid\" (exit $a_status) and changes nothing"
    fi
  done
  python3 "$judge" snapshot "$job/log" "$job/ran" >>"$job/snaps"
  release_b
  b_status=$?
  if [ $b_status = 0 ]; then finish_checks 1; else why="B exits $b_status"; fi
  if [ -z "$why" ]; then ok "$label: B, the writer, completes the job"; else
    fail "$label: $why" "B:" "$(tail -n 6 "$job/outB")"; fi
else
  release_b
  fail "$label: B never got there" "$(tail -n 5 "$job/outB")"
fi

# --- 20 pairs at once on a 50 MB log ---
restore "$small"
python3 "$judge" biglog "$tmp/done.log" "$small/log" "$job/log" 50
rm -rf "$big"; cp -r "$job" "$big"
base_lines=$(wc -l <"$big/log")
echo "# the log for the pairs: $(wc -c <"$big/log") bytes, $base_lines lines"
refused=0 came_after=0 both=0
for i in $(seq 1 "$pairs"); do
  restore "$big"
  "$sc" recover "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/out1" 2>&1 &
  p1=$!
  "$sc" recover "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/out2" 2>&1 &
  p2=$!
  started_pids+=("$p1" "$p2")
  wait $p1; s1=$?
  wait $p2; s2=$?
  why=""
  writer="" other=""
  for k in 1 2; do
    s=$([ $k = 1 ] && echo $s1 || echo $s2)
    if [ "$s" = 0 ] && ! grep -q "nothing to recover" "$job/out$k"; then
      [ -n "$writer" ] && why="both processes recovered the job"
      writer=$k
    else
      other=$k
    fi
  done
  if [ -z "$why" ] && [ -z "$writer" ]; then
    why="neither process recovered the job (exit $s1, $s2)"
  elif [ -z "$why" ]; then
    wpid=$([ "$writer" = 1 ] && echo $p1 || echo $p2)
    ostatus=$([ "$other" = 1 ] && echo $s1 || echo $s2)
    if [ "$ostatus" != 0 ] && [ "$ostatus" -lt 128 ] && grep -q "locked by pid $wpid\b" "$job/out$other"; then
      refused=$((refused + 1))
    elif [ "$ostatus" = 0 ] && grep -q "nothing to recover" "$job/out$other"; then
      came_after=$((came_after + 1))
    else
      why="the other process exits $ostatus without \"locked by pid $wpid\""
    fi
  fi
  [ "$why" = "both processes recovered the job" ] && both=$((both + 1))
  if [ -z "$why" ] && ! "$sc" verify "$job/log" >"$job/verify.out" 2>&1; then
    why="the chain is broken: $(head -c 300 "$job/verify.out")"
  fi
  if [ -z "$why" ]; then
    for s in $(seq 0 11); do
      runs=$(grep -cx "s$s" "$job/ran")
      if [ "$runs" != 1 ]; then why="s$s ran $runs times: $(tr '\n' ' ' <"$job/ran")"; break; fi
    done
  fi
  if [ -z "$why" ]; then
    tasks=$(tail -n +$((base_lines + 1)) "$job/log" | grep -o '"taskid":"[^"]*"' | sort -u | wc -l)
    completed=$(tail -n +$((base_lines + 1)) "$job/log" | grep -c '"type":"stagecoach.task.completed"')
    [ "$tasks" = 1 ] && [ "$completed" = 1 ] || why="after the old lines: $tasks task(s), $completed task.completed"
  fi
  if [ -z "$why" ]; then ok "pair $i: exactly one writer (process $writer), the chain verifies, each stage ran once"; else
    fail "pair $i: $why" "first (exit $s1):" "$(tail -n 4 "$job/out1")" "second (exit $s2):" "$(tail -n 4 "$job/out2")"; fi
done
echo "# pairs: $pairs; the other refused with \"locked by pid N\": $refused; came after the writer: $came_after; both got in: $both"
echo "# violations: $violations"
echo "1..$n"
