#!/usr/bin/env bash
# The `stagecoach` command, as TAP: every command and exit code, the error messages, recovery
# after kill -9 of `stagecoach run` from the log alone, rollback mode, a stage that times out and
# is killed (no orphan left), SIGINT during a stage.
sc=$1
tmp=$(mktemp -d)
cleanup() {
  # End only what this script started: the recorded pids of its commands.
  for f in "$tmp"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() { # check NAME EXPECTED_STATUS ACTUAL_STATUS [file-with-output]
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1 (exit $3, expected $2)" "$(head -c 2000 "${4:-/dev/null}" | sed 's/^/  /')"; fi
}
contains() { # contains NAME FILE PATTERN
  if grep -q -- "$3" "$2"; then ok "$1"; else fail "$1: no '$3' in output" "$(head -c 2000 "$2")"; fi
}
gone() { # gone PID: the process does not exist (bounded wait)
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  return 1
}

write_pipeline() { # write_pipeline FILE STAGES_JSON [PREVIOUS_STAGES_JSON]
  if [ -n "${3:-}" ]; then
    printf '{"plan":"t","tenant":"acme","config":{"version":"2","dir":"%s","stages":%s},\n"previous_config":{"version":"1","dir":"%s","stages":%s}}\n' "$tmp" "$2" "$tmp" "$3" >"$1"
  else
    printf '{"plan":"t","tenant":"acme","config":{"version":"2","dir":"%s","stages":%s}}\n' "$tmp" "$2" >"$1"
  fi
}



# --- help, version, usage ---
$sc --version >"$tmp/out" 2>&1; check "--version exits 0" 0 $? "$tmp/out"
contains "--version names the version" "$tmp/out" "^stagecoach [0-9]"
$sc --help >"$tmp/out" 2>&1; check "--help exits 0" 0 $? "$tmp/out"
all=0
for c in run recover verify events validate; do
  $sc $c --help >"$tmp/out" 2>&1 && grep -q "usage: stagecoach $c" "$tmp/out" || all=1
done
check "each command has --help" 0 $all
$sc frobnicate >"$tmp/out" 2>&1; check "an unknown command exits 2" 2 $? "$tmp/out"
$sc run >"$tmp/out" 2>&1; check "run without a pipeline exits 2" 2 $? "$tmp/out"
$sc run x.json --bogus >"$tmp/out" 2>&1; check "an unknown option exits 2" 2 $? "$tmp/out"

# --- validate ---
write_pipeline "$tmp/good.json" '[{"name":"a","kind":"exec","run":"true"},{"name":"b","kind":"exec","run":"true"}]'
$sc validate "$tmp/good.json" >"$tmp/out" 2>&1; check "validate accepts a good pipeline" 0 $? "$tmp/out"
contains "validate prints the fingerprint" "$tmp/out" "fingerprint sha256:[0-9a-f]\{64\}"
cat >"$tmp/bad.json" <<'JSON'
{
  "plan": "deploy",
  "config": {
    "stages": [
      { "name": "prepare", "kind": "exec", "run": "true" },
      {
        "name": "verify",
        "kind": "exec",
        "run": "true",
        "timeout_ms": -5
      }
    ]
  }
}
JSON
$sc validate "$tmp/bad.json" >"$tmp/out" 2>&1; check "validate refuses a bad field with exit 2" 2 $? "$tmp/out"
contains "the error names file, line, column, stage and field" "$tmp/out" "bad.json:10:23: stage \"verify\": \"timeout_ms\""
printf '{"config": {"stages": [\n  {"name": "a" "kind": "exec"}\n]}}\n' >"$tmp/malformed.json"
$sc validate "$tmp/malformed.json" >"$tmp/out" 2>&1; check "validate refuses malformed JSON with exit 2" 2 $? "$tmp/out"
contains "malformed JSON is located by line and column" "$tmp/out" "malformed.json:2:16: "
$sc validate "$tmp/missing.json" >"$tmp/out" 2>&1; check "validate of a missing file exits 2" 2 $? "$tmp/out"

# --- run ---
write_pipeline "$tmp/ok.json" '[{"name":"hello","kind":"exec","run":"echo hello from ${config.version}; echo \"{\\\"greeting\\\":\\\"hi\\\"}\" > $SC_OUTPUT"},{"name":"use","kind":"exec","run":"echo got ${context.greeting}"}]'
$sc run "$tmp/ok.json" --plain --log "$tmp/ok.jsonl" >"$tmp/out" 2>&1; check "run of a good pipeline exits 0" 0 $? "$tmp/out"
contains "stage output is prefixed with the stage name" "$tmp/out" "\[hello\] hello from 2"
contains "an output reaches the next stage as \${context.x}" "$tmp/out" "\[use\] got hi"
contains "run prints a summary table" "$tmp/out" "completed"
$sc verify "$tmp/ok.jsonl" >"$tmp/out" 2>&1; check "the run's log verifies" 0 $? "$tmp/out"
$sc events "$tmp/ok.jsonl" --type stage.completed >"$tmp/out" 2>&1
[ "$(grep -c stage.completed "$tmp/out")" = 2 ] && ok "events --type keeps one type" || fail "events --type keeps one type" "$(cat "$tmp/out")"
$sc events "$tmp/ok.jsonl" --json >"$tmp/out" 2>&1
cmp -s "$tmp/out" "$tmp/ok.jsonl" && ok "events --json prints the raw lines" || fail "events --json prints the raw lines"

write_pipeline "$tmp/fail.json" '[{"name":"broken","kind":"exec","run":"echo about to fail; exit 3","retry":{"max_attempts":2,"initial_backoff_ms":10}}]'
$sc run "$tmp/fail.json" --plain >"$tmp/out" 2>&1; check "a failing pipeline exits 1" 1 $? "$tmp/out"
contains "the failure shows the exit status" "$tmp/out" "exit status 3"

write_pipeline "$tmp/timeout.json" '[{"name":"slow","kind":"exec","run":"echo $$ > '"$tmp"'/slow.pid; exec sleep 30","timeout_ms":300,"kill_grace_ms":200}]'
$sc run "$tmp/timeout.json" --plain >"$tmp/out" 2>&1; check "a timed-out stage fails the run (exit 1)" 1 $? "$tmp/out"
contains "the timeout is reported" "$tmp/out" "timed out"
pid=$(cat "$tmp/slow.pid" 2>/dev/null)
[ -n "$pid" ] && gone "$pid" && ok "the timed-out command was killed (no orphan)" || fail "the timed-out command was killed (no orphan)"

write_pipeline "$tmp/int.json" '[{"name":"long","kind":"exec","run":"echo $$ > '"$tmp"'/long.pid; exec sleep 30"}]'
$sc run "$tmp/int.json" --plain >"$tmp/out" 2>&1 &
runner=$!
for _ in $(seq 1 100); do [ -s "$tmp/long.pid" ] && break; sleep 0.05; done
kill -INT $runner
wait $runner; status=$?
check "SIGINT during a stage cancels the run (exit 3)" 3 $status "$tmp/out"
pid=$(cat "$tmp/long.pid" 2>/dev/null)
[ -n "$pid" ] && gone "$pid" && ok "SIGINT leaves no orphan command" || fail "SIGINT leaves no orphan command"

write_pipeline "$tmp/gate.json" '[{"name":"gate","kind":"exec","run":"true","approval":{"required":true,"timeout_ms":200,"on_timeout":"reject"}}]'
$sc run "$tmp/gate.json" --plain --no-prompt >"$tmp/out" 2>&1; check "an approval timed out with on_timeout reject cancels (exit 3)" 3 $? "$tmp/out"

# --- on a terminal (a pty from script(1)): live progress and the approval prompt ---
if command -v script >/dev/null; then
  write_pipeline "$tmp/ask.json" '[{"name":"first","kind":"exec","run":"echo first"},{"name":"gate","kind":"exec","run":"echo passed the gate","approval":{"required":true}}]'
  (sleep 1; printf 'a\nlooks good\n') | timeout 30 script -qec "$sc run $tmp/ask.json --log $tmp/ask.jsonl" /dev/null >"$tmp/out" 2>&1
  check "on a terminal the operator approves at the prompt (exit 0)" 0 $? "$tmp/out"
  grep -q '"reviewer":"[^"]*","comment":"looks good"' "$tmp/ask.jsonl" && ok "the approval records the reviewer and the comment" || fail "the approval records the reviewer and the comment" "$(grep approval "$tmp/ask.jsonl" | head -c 600)"
  grep -q $'\033\[1A' "$tmp/out" && grep -q "attempt 1" "$tmp/out" && ok "on a terminal the status line is redrawn in place" || fail "live status line" "$(head -c 600 "$tmp/out" | cat -v)"
  (sleep 1; printf 'r\nnot today\n') | timeout 30 script -qec "$sc run $tmp/ask.json" /dev/null >"$tmp/out" 2>&1
  check "a rejection at the prompt cancels the run (exit 3)" 3 $? "$tmp/out"
else
  for t in 1 2 3 4; do ok "# SKIP script(1) is not installed"; done
fi

# --- recovery after kill -9 of `stagecoach run` ---
stages='[{"name":"one","kind":"exec","run":"echo one >> ${config.dir}/ran"},{"name":"two","kind":"exec","run":"echo two >> ${config.dir}/ran; sleep 1.5"},{"name":"three","kind":"exec","run":"echo three >> ${config.dir}/ran"}]'
previous='[{"name":"one","kind":"exec","run":"echo old-one >> ${config.dir}/ran"},{"name":"two","kind":"exec","run":"echo old-two >> ${config.dir}/ran"}]'
write_pipeline "$tmp/crash.json" "$stages" "$previous"
rm -f "$tmp/ran" "$tmp/crash.jsonl"
$sc run "$tmp/crash.json" --plain --log "$tmp/crash.jsonl" --fsync always >"$tmp/out" 2>&1 &
runner=$!
echo $runner >"$tmp/runner.pid"
for _ in $(seq 1 100); do grep -q two "$tmp/ran" 2>/dev/null && break; sleep 0.05; done
sleep 0.3
kill -9 $runner; wait $runner 2>/dev/null
pkill -9 -f "sleep 1.5" 2>/dev/null
size=$(wc -c <"$tmp/crash.jsonl")
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --dry-run >"$tmp/out" 2>&1; check "recover --dry-run exits 0" 0 $? "$tmp/out"
contains "the dry run prints the recovery plan" "$tmp/out" '"rerun"'
[ "$(wc -c <"$tmp/crash.jsonl")" = "$size" ] && ok "the dry run changes nothing" || fail "the dry run changes nothing"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --task nosuchtask >"$tmp/out" 2>&1; check "recover --task of an unknown task exits 2" 2 $? "$tmp/out"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --plain >"$tmp/out" 2>&1; check "recover after kill -9 completes (exit 0)" 0 $? "$tmp/out"
[ "$(grep -cx one "$tmp/ran")" = 1 ] && [ "$(grep -cx three "$tmp/ran")" = 1 ] && ok "the completed stage did not run again; the rest ran" || fail "stage runs" "$(cat "$tmp/ran")"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --plain >"$tmp/out" 2>&1; check "a second recover finds nothing (exit 0)" 0 $? "$tmp/out"

# rollback mode: a run that fails, recovered with --mode rollback using previous_config
write_pipeline "$tmp/rb.json" '[{"name":"one","kind":"exec","run":"echo one >> ${config.dir}/rb"},{"name":"two","kind":"exec","run":"exit 9"}]' \
  '[{"name":"one","kind":"exec","run":"echo old-one >> ${config.dir}/rb; test \"$SC_MODE\" = rollback"},{"name":"two","kind":"exec","run":"echo old-two >> ${config.dir}/rb"}]'
$sc run "$tmp/rb.json" --plain --log "$tmp/rb.jsonl" >"$tmp/out" 2>&1; check "the failing run exits 1" 1 $? "$tmp/out"
$sc recover "$tmp/rb.json" --log "$tmp/rb.jsonl" --mode rollback --plain >"$tmp/out" 2>&1; check "recover --mode rollback exits 4 (rolled back)" 4 $? "$tmp/out"
grep -qx old-two "$tmp/rb" && ok "the rollback ran the previous config's stages with SC_MODE=rollback" || fail "rollback stages" "$(cat "$tmp/rb")"

# a changed pipeline is refused
$sc run "$tmp/crash.json" --plain --log "$tmp/changed.jsonl" --task-id changed >/dev/null 2>&1 &
runner=$!
for _ in $(seq 1 100); do grep -q '"stage":"two"' "$tmp/changed.jsonl" 2>/dev/null && break; sleep 0.05; done
kill -9 $runner; wait $runner 2>/dev/null
pkill -9 -f "sleep 1.5" 2>/dev/null
sed 's/echo three/echo THREE/' "$tmp/crash.json" >"$tmp/changed.json"
$sc recover "$tmp/changed.json" --log "$tmp/changed.jsonl" --plain >"$tmp/out" 2>&1; check "recovery with a changed pipeline exits 2" 2 $? "$tmp/out"
contains "the refusal says the plan changed" "$tmp/out" "changed"

# --- verify ---
cp "$tmp/ok.jsonl" "$tmp/corrupt.jsonl"
sed -i '3s/"seq":3/"seq":4/' "$tmp/corrupt.jsonl"
$sc verify "$tmp/corrupt.jsonl" >"$tmp/out" 2>&1; check "verify of an edited log exits 1" 1 $? "$tmp/out"
contains "verify names the first bad line" "$tmp/out" "line 3"
echo "1..$n"
