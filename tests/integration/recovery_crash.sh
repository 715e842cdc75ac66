#!/usr/bin/env bash
# Crash during recovery, as TAP (issue 10). The reference job (faultcheck.py pipeline) is stopped
# in two ways: its irreversible s6 ran but the write of its stage.completed failed (EIO), so the
# recovery asks approval for it in flight; and a kill -9 right after s2's stage.completed. A
# clean recovery of each, in `always` and `batch` mode, counts the lines the recovery writes;
# then, for every one of those event boundaries, the recovery is killed with SIGKILL right after
# that line (the iofault shim writes the log up to it and kills the process), and `stagecoach
# recover` runs again. Checked as in faults.sh: the log verifies, the job completes, a further
# recover finds nothing, every stage ran, no logged stage.completed ran again, at most one re-run
# per incident, and s6 ran again only after an approval that names it in flight.
sc=$1 shim=$2 judge=$3
. "$(dirname "$0")/faultlib.sh"

kills=0 in_flight=0
base=$tmp/base
for mode in always batch; do
  for stop in irreversible-in-flight killed-after-s2; do
    # The first incident, kept in $base.
    fresh_job
    sc_shim SC_IOFAULT_TRACE="$job/trace" -- run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
    if [ $stop = irreversible-in-flight ]; then
      at=$(python3 "$judge" call "$job/log" "$job/trace" stage.completed s6)
      incident=(SC_IOFAULT_FAIL="$at" SC_IOFAULT_ERRNO=EIO)
    else
      at=$(python3 "$judge" line "$job/log" stage.completed s2)
      incident=(SC_IOFAULT_KILL_LINE="$at")
    fi
    fresh_job
    sc_shim "${incident[@]}" -- run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
    status=$?
    stages_gone
    : >"$job/snaps"
    rm -rf "$base"; cp -r "$job" "$base"
    # The clean recovery gives the boundaries.
    before=$(wc -l <"$job/log")
    continue_job "$mode"
    rstatus=$?
    boundaries=$(($(wc -l <"$job/log") - before))
    finish_checks 1
    if [ "$at" -gt 0 ] && [ $status != 0 ] && [ $rstatus = 0 ] && [ -z "$why" ] && [ $boundaries -gt 0 ]; then
      ok "$mode, $stop: the clean recovery completes, writing $boundaries lines"
    else
      fail "$mode, $stop: the incident (at $at, exit $status) or its clean recovery (exit $rstatus): $why" "$(tail -n 8 "$job/out")"
      continue
    fi
    for b in $(seq 1 $boundaries); do
      label="$mode, $stop: recovery killed after its line $b of $boundaries"
      rm -rf "$job"; cp -r "$base" "$job"
      continue_job "$mode" SC_IOFAULT_KILL_LINE="$b" SC_IOFAULT_TRACE="$job/ktrace"
      status=$?
      cp "$job/out" "$job/out1"
      stages_gone
      why=""
      if [ $status != 137 ] || ! grep -q "^kill after line $b" "$job/ktrace"; then
        why="the recovery was not killed at line $b (exit $status)"
      else
        kills=$((kills + 1))
        continue_job "$mode"
        status=$?
        if [ $status != 0 ]; then why="the recovery after the kill exits $status"; else finish_checks 2; fi
        [ -z "$why" ] && [ $stop = irreversible-in-flight ] &&
          [ "$(grep -c '"reason":"irreversible-stage-in-flight"' "$job/log")" -ge 1 ] && in_flight=$((in_flight + 1))
      fi
      if [ -z "$why" ]; then
        ok "$label, recovered again"
      else
        fail "$label: $why" "killed recovery:" "$(tail -n 6 "$job/out1")" "then:" "$(tail -n 8 "$job/out")" \
          "ran: $(tr '\n' ' ' <"$job/ran" 2>/dev/null)"
      fi
    done
  done
done
if [ $in_flight -gt 0 ]; then
  ok "recoveries asked approval for s6 in flight after $in_flight of the kills"
else
  fail "no recovery asked approval for s6 in flight"
fi
echo "# kills: $kills"
echo "# violations: $violations"
echo "1..$n"
