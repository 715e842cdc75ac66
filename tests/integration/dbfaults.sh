#!/usr/bin/env bash
# I/O faults at every write and every sync of the SQLite store, as TAP (the way faults.sh walks
# the log's calls): the job (4 exec stages of the real `stagecoach` command, --db only) runs once
# clean under strace to count the database's writes (pwrite64: the database, its -wal and any
# -journal; the -shm is mapped, not written) and syncs (fdatasync, fsync); then, for every one
# of those calls N = 1..all and for ENOSPC and EIO, it runs again with that call failing
# (strace's fault injection, `when=N`), and the operator carries on with `recover --db` (or `run`
# again when the database holds no task). Checked: no sanitizer report; the faulted run exits 0
# only when the fault was not injected or hit nothing that mattered, 5 (the store is incomplete,
# said so) or 2 (the database could not be opened, nothing ran); the recovery completes; every
# stage ran; no stage whose checkpoint was in the database ran again; none ran more than twice
# (and at most one, the one in flight, ran twice); a further recover finds nothing. SC_DBFAULT_STRIDE=N walks
# every Nth call only (default 1: every call).
sc=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
stride=${SC_DBFAULT_STRIDE:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" # LeakSanitizer does not run under ptrace
if ! command -v strace >/dev/null; then echo "1..1"; echo "not ok 1 - strace is needed"; exit 1; fi

job=$tmp/job
fresh_job() {
  rm -rf "$job"; mkdir -p "$job"
  printf '{"plan":"dbfault","config":{"stages":[' >"$job/p.json"
  for i in 1 2 3 4; do
    [ $i -gt 1 ] && printf ',' >>"$job/p.json"
    printf '{"name":"s%d","kind":"exec","run":"echo s%d >> %s/ran"}' $i $i "$job" >>"$job/p.json"
  done
  printf ']}}\n' >>"$job/p.json"
}
run_job() { (cd "$job" && "$sc" "$@" --no-prompt --plain); }
logged() { # the stages whose checkpoint the database holds
  "$sc" checkpoints --db "$job/job.db" job --json 2>/dev/null | grep -o '"stage":"s[0-9]"' |
    cut -d'"' -f4 | sort -u
}

fresh_job
strace -f -qq -o "$tmp/trace" -e trace=pwrite64,fdatasync,fsync \
  "$sc" run "$job/p.json" --db "$job/job.db" --task-id job --plain --no-prompt >"$tmp/out" 2>&1
clean=$?
writes=$(grep -c 'pwrite64(' "$tmp/trace")
syncs=$(grep -c 'sync(' "$tmp/trace")
fsyncs=$(grep -c '^[0-9]* *fsync(' "$tmp/trace")
datasyncs=$(grep -c 'fdatasync(' "$tmp/trace")
per_errno=$(( (writes + stride - 1) / stride + (datasyncs + stride - 1) / stride + (fsyncs + stride - 1) / stride ))
cases=$((per_errno * 2))
echo "1..$((cases + 6))"
incomplete=0
injected=0
n=1
if [ $clean = 0 ] && [ "$(sort -u "$job/ran" | wc -l)" = 4 ]; then
  echo "ok 1 - a clean run completes ($writes writes and $syncs syncs of the database)"
else
  echo "not ok 1 - clean run exits $clean"; sed 's/^/# /' "$tmp/out" | head -20
fi

one_case() { # one_case SYSCALL K ERRNO
  local sys=$1 k=$2 err=$3 why="" status
  fresh_job
  strace -f -qq -o "$job/strace" -e "trace=$sys" -e "inject=$sys:error=$err:when=$k" \
    "$sc" run "$job/p.json" --db "$job/job.db" --task-id job --plain --no-prompt >"$job/out1" 2>&1
  status=$?
  local hit
  hit=$(grep -c 'INJECTED' "$job/strace")
  [ "$hit" -gt 0 ] && injected=$((injected + 1))
  logged >"$job/before"
  if grep -q 'Sanitizer\|runtime error:' "$job/out1"; then
    why="the faulted run reports a sanitizer error"
  elif [ "$hit" = 0 ] && [ $status != 0 ]; then
    why="no fault was injected (the run made fewer calls) but the run exits $status"
  elif [ $status != 0 ] && [ $status != 5 ] && [ $status != 2 ]; then
    why="the faulted run exits $status"
  elif [ $status = 5 ] && ! grep -q "database" "$job/out1"; then
    why="exit 5 without saying the database is incomplete"
  fi
  [ $status = 5 ] && incomplete=$((incomplete + 1))
  if [ -z "$why" ]; then
    if "$sc" checkpoints --db "$job/job.db" job >/dev/null 2>&1; then
      run_job recover "$job/p.json" --db "$job/job.db" >"$job/out2" 2>&1
    else
      run_job run "$job/p.json" --db "$job/job.db" --task-id job >"$job/out2" 2>&1
    fi
    status=$?
    if [ $status != 0 ]; then why="the recovery exits $status: $(tr '\n' ' ' <"$job/out2" | head -c 400)"; fi
  fi
  if [ -z "$why" ]; then
    local twice=0
    for s in s1 s2 s3 s4; do
      runs=$(grep -cx "$s" "$job/ran" 2>/dev/null || true)
      if [ "${runs:-0}" -lt 1 ]; then why="$s never ran"; break; fi
      if [ "$runs" -gt 2 ]; then why="$s ran $runs times"; break; fi
      [ "$runs" = 2 ] && twice=$((twice + 1))
      if [ $twice -gt 1 ]; then why="more than one stage ran again (only the in-flight one may)"; break; fi
      if grep -qx "$s" "$job/before" && [ "$runs" -ne 1 ]; then
        why="$s ran again although its checkpoint was in the database"; break
      fi
    done
  fi
  if [ -z "$why" ] && ! run_job recover "$job/p.json" --db "$job/job.db" 2>&1 | grep -q "nothing to recover"; then
    why="a further recover finds something"
  fi
  n=$((n + 1))
  if [ -z "$why" ]; then echo "ok $n - $err at $sys $k"; else echo "not ok $n - $err at $sys $k: $why"; fi
}

for err in ENOSPC EIO; do
  for k in $(seq 1 "$stride" "$writes"); do one_case pwrite64 "$k" $err; done
  for k in $(seq 1 "$stride" "$datasyncs"); do one_case fdatasync "$k" $err; done
  for k in $(seq 1 "$stride" "$fsyncs"); do one_case fsync "$k" $err; done
done
n=$((n + 1))
# Every call of the clean run is one the faulted runs make too, give or take a few at the end.
if [ "$injected" -ge $((cases * 9 / 10)) ]; then
  echo "ok $n - the fault was injected in $injected of $cases runs"
else
  echo "not ok $n - the fault was injected in only $injected of $cases runs"
fi
n=$((n + 1))
# The injection must be felt: most faulted calls are a commit's, which the run reports (exit 5).
if [ "$incomplete" -gt $((cases / 3)) ]; then
  echo "ok $n - $incomplete of $cases faulted runs said the database is incomplete (exit 5)"
else
  echo "not ok $n - only $incomplete of $cases faulted runs exited 5: the faults were not felt"
fi

# The database damaged during a run, by a stage of the run itself: deleted, replaced by another
# file, or overwritten by another program. The store stops before its next commit: the run exits 5
# naming what happened, the stages after the damage never start, and nothing crashes.
damage_case() { # damage_case LABEL SHELL-COMMAND EXPECTED-WORDS
  local label=$1 cmd=$2 says=$3 why="" status
  rm -rf "$job"; mkdir -p "$job"
  printf '{"plan":"damage","config":{"stages":[{"name":"s1","kind":"exec","run":"echo s1 >> %s/ran"},' "$job" >"$job/p.json"
  printf '{"name":"s2","kind":"exec","run":"%s; echo s2 >> %s/ran"},' "$cmd" "$job" >>"$job/p.json"
  printf '{"name":"s3","kind":"exec","run":"echo s3 >> %s/ran"}]}}\n' "$job" >>"$job/p.json"
  (cd "$job" && "$sc" run p.json --db "$job/job.db" --task-id job --plain --no-prompt) >"$job/out" 2>&1
  status=$?
  if grep -q 'Sanitizer\|runtime error:' "$job/out"; then
    why="a sanitizer error"
  elif [ $status != 5 ]; then
    why="the run exits $status, not 5"
  elif ! grep -q "$says" "$job/out"; then
    why="the run does not say '$says'"
  elif grep -qx s3 "$job/ran"; then
    why="s3 ran after the database was damaged"
  fi
  n=$((n + 1))
  if [ -z "$why" ]; then echo "ok $n - $label: exit 5, the task paused"; else
    echo "not ok $n - $label: $why"; sed 's/^/# /' "$job/out" | head -20; fi
}
# ($job has no spaces: mktemp's name.)
damage_case "the database deleted during the run" "rm -f $job/job.db" "deleted or replaced"
damage_case "the database replaced during the run" \
  "echo junk > $job/new.db && mv $job/new.db $job/job.db" "deleted or replaced"
# (A pause first: the file's times tick coarsely, a few ms, and an overwrite within the tick of the
# store's own last commit leaves size and mtime as that commit left them; docs/sqlite.md says so.)
damage_case "the database overwritten during the run" \
  "sleep 0.2; head -c 8192 /dev/zero | tr -c x x | dd of=$job/job.db conv=notrunc 2>/dev/null" "another program"
