# Sourced by the fault suites (faults.sh, writers.sh, recovery_crash.sh, growth.sh): TAP output,
# the reference job, and `stagecoach` run under the iofault shim. The caller sets sc (the
# command), shim (libiofault.so) and judge (faultcheck.py) before sourcing.
tmp=$(mktemp -d)
# The exec kind's working directories go here too: a process killed with -9 leaves its own behind.
export TMPDIR=$tmp
# The shim is preloaded ahead of the sanitizer runtime of an instrumented build.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:verify_asan_link_order=0"
started_pids=()
cleanup() {
  # End only what this script started: its own background commands, by pid.
  local p
  for p in "${started_pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

n=0
violations=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() {
  n=$((n + 1)); violations=$((violations + 1)); echo "not ok $n - $1"; shift
  local l; for l in "$@"; do printf '%s\n' "$l" | head -c 3000 | sed 's/^/# /'; done
}

# The job lives in $job: pipeline p.json, log, ran (one line per stage run), pids (the stages'
# shells). A fresh job: fresh_job [STAGES].
job=$tmp/job
fresh_job() {
  rm -rf "$job"; mkdir -p "$job"
  python3 "$judge" pipeline "$job/p.json" "$job" "${1:-12}"
}

# sc_shim ENV... -- ARGS...: stagecoach under the shim, watching $job/log; ENV are the shim's
# settings (SC_IOFAULT_FAIL=3 ...). Output goes to $out_file, else $job/out; returns the
# command's status.
sc_shim() {
  local env=(LD_PRELOAD="$shim" SC_IOFAULT_LOG="$job/log")
  while [ $# -gt 0 ] && [ "$1" != -- ]; do env+=("$1"); shift; done
  shift
  # The group's own stderr is closed to the shell's "Killed" notice of a process the shim kills.
  { env "${env[@]}" "$sc" "$@" >"${out_file:-$job/out}" 2>&1; } 2>/dev/null
}

# has_task: the log holds a task.created, so the job is continued with `recover`; otherwise the
# job never went on record and is started again with `run`.
has_task() { grep -q '"type":"stagecoach.task.created"' "$job/log" 2>/dev/null; }

# continue_job MODE ENV...: what an operator does next: recover (approving the in-flight
# irreversible stage: --no-prompt lets its gate approve on timeout), or run again when the log
# holds no task. Appends the snapshot taken before it to $job/snaps.
continue_job() {
  local mode=$1; shift
  python3 "$judge" snapshot "$job/log" "$job/ran" >>"$job/snaps"
  if has_task; then
    sc_shim "$@" -- recover "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
  else
    sc_shim "$@" -- run "$job/p.json" --log "$job/log" --fsync "$mode" --no-prompt --plain
  fi
}

# sanitizer_report FILE: the output holds a report of the sanitizers (a bug whatever the status).
sanitizer_report() { grep -q 'Sanitizer\|runtime error:' "$1"; }

# stages_gone: the stages' shells have all exited (bounded wait); a kill -9 of stagecoach leaves
# the running one to finish by itself, and it must not write into the next run's count.
stages_gone() {
  local p _
  [ -f "$job/pids" ] || return 0
  for p in $(cat "$job/pids"); do
    for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.01; done
  done
}

# finish_checks INCIDENTS: the job is over; the log verifies, a further recover finds nothing
# and writes nothing, and the invariants hold (faultcheck.py judge) after INCIDENTS faults or
# kills. Sets $why: empty when all holds, else what does not.
finish_checks() {
  local incidents=$1
  why=""
  if ! "$sc" verify "$job/log" >"$job/verify.out" 2>&1; then
    why="verify fails: $(head -c 600 "$job/verify.out")"
    return
  fi
  cp "$job/log" "$job/log.done"
  if ! "$sc" recover "$job/p.json" --log "$job/log" --no-prompt --plain >"$job/again.out" 2>&1; then
    why="a further recover exits non-zero: $(head -c 600 "$job/again.out")"
    return
  fi
  if ! cmp -s "$job/log" "$job/log.done"; then
    why="a further recover wrote to the finished log"
    return
  fi
  # shellcheck disable=SC2046
  why=$(python3 "$judge" judge "$job/log" "$job/ran" "$incidents" $(cat "$job/snaps") | tr '\n' ';')
}
