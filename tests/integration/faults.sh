#!/usr/bin/env bash
# I/O faults at every call, as TAP (issue 10; SQLite's I/O-error tests are the model). The
# reference job (12 exec stages of the real `stagecoach` command, s6 irreversible behind a gate)
# runs once clean in `always` and in `batch` mode under the iofault shim, which counts the
# writes and syncs made on the log (stdout, stderr and the stages' pipes are not counted). Then,
# for every one of those calls and for EIO and ENOSPC (a write failing with ENOSPC first writes
# half its bytes, as on a disk that fills up), the job runs again with that call failing,
# and the operator carries on: `recover` (or `run` again, when the log holds no task). Checked:
# the faulted run exits 5 (the log is incomplete) naming the error and reports no sanitizer
# error; the recovery completes; the log verifies; a further recover finds nothing and writes
# nothing; every stage ran; no stage whose stage.completed was logged ran again; at most one
# stage re-ran per incident (so none more than twice after one fault); the in-flight
# irreversible s6 ran again only after an approval that names it in flight; and no stage ran
# while the log held no task.created. Then the same with a second fault in the recovery itself,
# at a call that moves along the recovery's own calls from case to case (after two incidents a
# stage in flight at both may run three times; the count is printed).
sc=$1 shim=$2 judge=$3
. "$(dirname "$0")/faultlib.sh"

# A disk that fills up takes part of a write: with ENOSPC the failing write writes half its bytes
# and the write of the rest fails; with EIO nothing is written.
short() { [ "$1" = ENOSPC ] && echo 1 || echo 0; }
strerror() { [ "$1" = EIO ] && echo "Input/output error" || echo "No space left on device"; }
faults=0 second_faults=0 cases=0 triple=0 restarted=0 in_flight=0
case_index=0
for mode in always batch; do
  # The clean run gives the number of calls to fail.
  fresh_job
  sc_shim SC_IOFAULT_TRACE="$job/trace" -- run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
  status=$?
  calls=$(grep -c "^[0-9]" "$job/trace")
  writes=$(grep -c ' write ' "$job/trace")
  syncs=$(grep -c ' sync ' "$job/trace")
  bytes=$(awk '$2 == "write" { s += $3 } END { print s + 0 }' "$job/trace")
  echo "# $mode: a clean run makes $writes writes and $syncs syncs on the log"
  if [ $status = 0 ] && [ "$bytes" = "$(wc -c <"$job/log")" ] && [ "$writes" -gt 0 ] && [ "$syncs" -gt 0 ]; then
    ok "$mode: the clean run completes; the counted writes carry exactly the log's $bytes bytes"
  else
    fail "$mode: clean run (exit $status, $bytes bytes counted, log $(wc -c <"$job/log"))" "$(cat "$job/out")"
  fi
  for errno in EIO ENOSPC; do
    other=$([ $errno = EIO ] && echo ENOSPC || echo EIO)
    for k in $(seq 1 "$calls"); do
      cases=$((cases + 1)); case_index=$((case_index + 1))
      label="$mode: $errno at call $k of $calls"
      fresh_job
      sc_shim SC_IOFAULT_TRACE="$job/trace1" SC_IOFAULT_FAIL=$k SC_IOFAULT_ERRNO=$errno \
        SC_IOFAULT_SHORT="$(short $errno)" -- \
        run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
      status=$?
      cp "$job/out" "$job/out1"
      hit=$(grep -c ' fail ' "$job/trace1")
      failed_call=$(grep ' fail ' "$job/trace1" | awk '{ print $3 }')
      faults=$((faults + hit))
      why=""
      if sanitizer_report "$job/out1"; then
        why="the faulted run reports a sanitizer error"
      elif [ "$hit" = 1 ] && [ $status != 5 ]; then
        why="the run exits $status, not 5 (the log is incomplete), although its $failed_call failed"
      elif [ "$hit" = 1 ] && ! grep -q "$(strerror $errno)" "$job/out1"; then
        why="the run does not report the failed $failed_call (\"$(strerror $errno)\")"
      elif [ $status -ge 128 ]; then
        why="the faulted run died of signal $((status - 128))"
      elif [ "$hit" = 0 ] && [ $status != 0 ]; then
        why="no fault was injected (the run made fewer calls) but the run exits $status"
      fi
      cp "$job/log" "$job/log.after" 2>/dev/null || rm -f "$job/log.after"
      cp "$job/ran" "$job/ran.after" 2>/dev/null || rm -f "$job/ran.after"
      if [ -z "$why" ]; then
        : >"$job/snaps"
        has_task || restarted=$((restarted + 1))
        continue_job "$mode" SC_IOFAULT_TRACE="$job/trace2"
        status=$?
        if [ $status != 0 ]; then
          why="the recovery exits $status"
        else
          finish_checks "$hit"
          grep -q '"reason":"irreversible-stage-in-flight"' "$job/log" && in_flight=$((in_flight + 1))
        fi
      fi
      if [ -z "$why" ]; then
        ok "$label${failed_call:+ (a $failed_call)}, recovered"
      else
        fail "$label${failed_call:+ (a $failed_call)}: $why" "run:" "$(tail -n 8 "$job/out1")" \
          "then:" "$(tail -n 8 "$job/out")" "ran: $(tr '\n' ' ' <"$job/ran" 2>/dev/null)"
        continue
      fi

      # The same incident, then a second fault in the recovery itself: at call j of the calls
      # the clean recovery above made, moving along from case to case.
      recovery_calls=$(grep -c "^[0-9]" "$job/trace2")
      j=$((1 + case_index % (recovery_calls > 0 ? recovery_calls : 1)))
      rm -f "$job/log" "$job/ran" "$job/trace3"
      [ -f "$job/log.after" ] && cp "$job/log.after" "$job/log"
      [ -f "$job/ran.after" ] && cp "$job/ran.after" "$job/ran"
      : >"$job/snaps"
      label2="$label, then $other at call $j of the recovery's $recovery_calls"
      continue_job "$mode" SC_IOFAULT_TRACE="$job/trace3" SC_IOFAULT_FAIL=$j SC_IOFAULT_ERRNO=$other \
        SC_IOFAULT_SHORT="$(short $other)"
      status=$?
      cp "$job/out" "$job/out2"
      hit2=$(grep -c ' fail ' "$job/trace3")
      second_faults=$((second_faults + hit2))
      why=""
      if sanitizer_report "$job/out2"; then
        why="the faulted recovery reports a sanitizer error"
      elif [ "$hit2" = 1 ] && [ $status != 5 ]; then
        why="the recovery exits $status, not 5, although its $(grep ' fail ' "$job/trace3" | awk '{ print $3 }') failed"
      elif [ "$hit2" = 1 ] && ! grep -q "$(strerror $other)" "$job/out2"; then
        why="the recovery does not report its failed call (\"$(strerror $other)\")"
      elif [ $status -ge 128 ]; then
        why="the faulted recovery died of signal $((status - 128))"
      fi
      if [ -z "$why" ]; then
        continue_job "$mode"
        status=$?
        if [ $status != 0 ]; then
          why="the recovery after the second fault exits $status"
        else
          finish_checks $((hit + hit2))
        fi
      fi
      for s in $(seq 0 11); do
        [ "$(grep -cx "s$s" "$job/ran")" -gt 2 ] && triple=$((triple + 1))
      done
      if [ -z "$why" ]; then
        ok "$label2, recovered"
      else
        fail "$label2: $why" "faulted recovery:" "$(tail -n 8 "$job/out2")" "then:" \
          "$(tail -n 8 "$job/out")" "ran: $(tr '\n' ' ' <"$job/ran" 2>/dev/null)"
      fi
    done
  done
done
# --- The same with a real failing system call: strace fails every fdatasync and fsync (of any
# thread: the log's syncs run on the thread pool), in the run and in a recovery. LeakSanitizer
# cannot run under ptrace; the rest of the sanitizers do.
. "$(dirname "$0")/../need-packages.sh"
need_packages strace >"$tmp/need.out" 2>&1 || echo "# strace is missing: $(tr '\n' ' ' <"$tmp/need.out")"
strace_faults=0
sc_strace() { # sc_strace ERRNO ARGS...: stagecoach with every sync failing with ERRNO
  local errno=$1; shift
  ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" strace -f -qq -o "$job/strace.out" \
    -e trace=fdatasync,fsync -e inject=fdatasync,fsync:error="$errno" "$sc" "$@" >"$job/out" 2>&1
}
for mode in always batch; do
  for where in run recovery; do
    errno=$([ $where = run ] && echo EIO || echo ENOSPC)
    label="$mode: every sync fails with $errno (strace) in the $where"
    fresh_job
    : >"$job/snaps"
    incidents=1
    if [ $where = recovery ]; then
      sc_shim SC_IOFAULT_FAIL=20 -- run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
      python3 "$judge" snapshot "$job/log" "$job/ran" >>"$job/snaps"
      incidents=2
      sc_strace $errno recover "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
    else
      python3 "$judge" snapshot "$job/log" "$job/ran" >>"$job/snaps"
      sc_strace $errno run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
    fi
    status=$?
    injected=$(grep -c "$errno.*(INJECTED)" "$job/strace.out" 2>/dev/null)
    strace_faults=$((strace_faults + ${injected:-0}))
    cp "$job/out" "$job/out1"
    why=""
    if [ "${injected:-0}" = 0 ]; then
      why="strace injected no failure (exit $status)"
    elif sanitizer_report "$job/out1"; then
      why="a sanitizer error"
    elif [ $status != 5 ] || ! grep -q "$(strerror $errno)" "$job/out1"; then
      why="the $where exits $status (not 5) or does not name the error"
    else
      continue_job "$mode"
      status=$?
      if [ $status != 0 ]; then why="the recovery exits $status"; else finish_checks $incidents; fi
    fi
    if [ -z "$why" ]; then ok "$label, recovered"; else
      fail "$label: $why" "$(tail -n 8 "$job/out1")" "then:" "$(tail -n 8 "$job/out")"; fi
  done
done
echo "# real failing syncs injected by strace: $strace_faults"
# The invariants about the barriers were exercised, not vacuous.
if [ $in_flight -gt 0 ] && [ $restarted -gt 0 ]; then
  ok "the faults left s6 in flight $in_flight times (its recovery asked approval) and no task on record $restarted times (the job ran again)"
else
  fail "the faults never left s6 in flight ($in_flight) or never left the log without a task ($restarted)"
fi
echo "# cases: $cases; faults injected: $faults in runs, $second_faults in recoveries; stages run three times after two incidents: $triple"
echo "# violations: $violations"
echo "1..$n"
