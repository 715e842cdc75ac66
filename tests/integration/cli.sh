#!/usr/bin/env bash
# The `stagecoach` command, as TAP: every command and exit code, the error messages, recovery
# after kill -9 of `stagecoach run` from the log alone, rollback mode, a stage that times out and
# is killed (no orphan left), SIGINT during a stage.
sc=$1
tmp=$(mktemp -d)
# The exec kind's working directories go here too: a run killed with -9 leaves its own behind.
export TMPDIR=$tmp
cleanup() {
  # End only what this script started: the recorded pids of its commands.
  for f in "$tmp"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do printf '%s\n' "$l" | sed 's/^/# /'; done; }
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
# a value of ours in a script is refused at load, where it stands, with the form that replaces it
cat >"$tmp/inject.json" <<'JSON'
{
  "plan": "deploy",
  "config": {
    "stages": [
      { "name": "build", "kind": "exec", "run": "true" },
      {
        "name": "deploy",
        "kind": "exec",
        "retry": { "max_attempts": 3 },
        "timeout_ms": 60000,
        "effect": "compensable",
        "run": "./deploy.sh ${context.artifact}",
        "compensate": "true"
      }
    ]
  }
}
JSON
: >"$tmp/empty.jsonl"
for cmd in validate run recover; do
  extra=; [ $cmd = recover ] && extra="--log $tmp/empty.jsonl"
  $sc $cmd "$tmp/inject.json" $extra >"$tmp/out" 2>&1; check "$cmd refuses \${context.x} in run (exit 2)" 2 $? "$tmp/out"
  contains "... at its line and column, with the env form" "$tmp/out" 'inject.json:12:29: stage "deploy": "run" may not contain ${context.artifact}; pass it as "env": {"ARTIFACT": "${context.artifact}"} and write "$ARTIFACT"'
done

# --- run ---
write_pipeline "$tmp/ok.json" '[{"name":"hello","kind":"exec","env":{"V":"${config.version}"},"run":"echo hello from $V; echo \"{\\\"greeting\\\":\\\"hi\\\"}\" > $SC_OUTPUT"},{"name":"use","kind":"exec","args":["${context.greeting}"],"run":"echo got \"$1\""}]'
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
contains "... and the summary shows the stage cancelled" "$tmp/out" "long  *cancelled"
pid=$(cat "$tmp/long.pid" 2>/dev/null)
[ -n "$pid" ] && gone "$pid" && ok "SIGINT leaves no orphan command" || fail "SIGINT leaves no orphan command"

write_pipeline "$tmp/gate.json" '[{"name":"gate","kind":"exec","run":"true","approval":{"required":true,"timeout_ms":200,"on_timeout":"reject"}}]'
$sc run "$tmp/gate.json" --plain --no-prompt >"$tmp/out" 2>&1; check "an approval timed out with on_timeout reject cancels (exit 3)" 3 $? "$tmp/out"

# --- on a terminal (a pty from script(1), util-linux): live progress and the approval prompt ---
# script(1) runs its command through $SHELL -c; "exec" keeps a shell that does not exec by itself
# (dash) out of the terminal's foreground group, where Ctrl-C would end it. What is typed waits for
# the question on screen (bounded), so a slow start does not take the keys for something else.
export SHELL=/bin/sh # what script(1) runs the command with; whatever the caller's is (or is not)
at_prompt() {
  for _ in $(seq 1 200); do grep -aq "approval needed" "$tmp/out" 2>/dev/null && return; sleep 0.05; done
}
{
  write_pipeline "$tmp/ask.json" '[{"name":"first","kind":"exec","run":"echo first"},{"name":"gate","kind":"exec","run":"echo passed the gate","approval":{"required":true}}]'
  : >"$tmp/out"
  (at_prompt; printf 'a\nlooks good\n') | timeout 30 script -qec "exec $sc run $tmp/ask.json --log $tmp/ask.jsonl" /dev/null >"$tmp/out" 2>&1
  check "on a terminal the operator approves at the prompt (exit 0)" 0 $? "$tmp/out"
  grep -q '"reviewer":"[^"]*","comment":"looks good"' "$tmp/ask.jsonl" && ok "the approval records the reviewer and the comment" || fail "the approval records the reviewer and the comment" "$(grep approval "$tmp/ask.jsonl" | head -c 600)"
  grep -q $'\033\[1A' "$tmp/out" && grep -q "attempt 1" "$tmp/out" && ok "on a terminal the status line is redrawn in place" || fail "live status line" "$(head -c 600 "$tmp/out" | cat -v)"
  : >"$tmp/out"
  (at_prompt; printf 'r\nnot today\n') | timeout 30 script -qec "exec $sc run $tmp/ask.json" /dev/null >"$tmp/out" 2>&1
  check "a rejection at the prompt cancels the run (exit 3)" 3 $? "$tmp/out"
  # A gate settled while its question is on screen: the question goes and the run ends, though
  # the terminal stays open and nobody types (stdin is held open for 8 s).
  write_pipeline "$tmp/lapse.json" '[{"name":"gate","kind":"exec","run":"echo passed","approval":{"required":true,"timeout_ms":300,"on_timeout":"approve"}}]'
  began=$(date +%s)
  timeout 30 script -qec "exec $sc run $tmp/lapse.json" /dev/null < <(sleep 8) >"$tmp/out" 2>&1
  status=$?; took=$(($(date +%s) - began))
  check "an approval that times out at the prompt lets the run finish (exit 0)" 0 $status "$tmp/out"
  [ $took -lt 6 ] && ok "... without waiting for an answer (${took}s)" || fail "the run waited ${took}s for an answer to a settled gate" "$(head -c 800 "$tmp/out" | cat -v)"
  contains "... and says the question lapsed" "$tmp/out" "no longer asked: approval.timed_out"
  began=$(date +%s)
  : >"$tmp/out"
  timeout 30 script -qec "exec $sc run $tmp/ask.json" /dev/null < <(at_prompt; printf '\003'; sleep 8) >"$tmp/out" 2>&1
  status=$?; took=$(($(date +%s) - began))
  check "Ctrl-C at the prompt cancels the run (exit 3)" 3 $status "$tmp/out"
  [ $took -lt 6 ] && ok "... at once (${took}s)" || fail "Ctrl-C at the prompt took ${took}s" "$(head -c 800 "$tmp/out" | cat -v)"
}

# --- trace context: TRACEPARENT and TRACESTATE in, a span of its own per stage out ---
tp=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
write_pipeline "$tmp/trace.json" '[{"name":"traced","kind":"exec","env":{"D":"${config.dir}"},"run":"printf \"%s %s %s\\n\" \"$TRACEPARENT\" \"$TRACESTATE\" \"$SC_IDEMPOTENCY_KEY\" > $D/trace"}]'
TRACEPARENT=$tp TRACESTATE='vendor=a1,other@sys=b 2' $sc run "$tmp/trace.json" --plain --log "$tmp/trace.jsonl" >"$tmp/out" 2>&1; check "run takes TRACEPARENT and TRACESTATE (exit 0)" 0 $? "$tmp/out"
read -r seen_tp seen_ts seen_ts2 seen_key <"$tmp/trace" || true
span=$(grep -o '"span_id":"[0-9a-f]*"' "$tmp/trace.jsonl" | head -n 1 | cut -d'"' -f4)
case "$seen_tp" in
  00-4bf92f3577b34da6a3ce929d0e0e4736-*-01) ok "the stage's TRACEPARENT has the task's trace id and flags" ;;
  *) fail "the stage's TRACEPARENT has the task's trace id and flags" "$seen_tp" ;;
esac
[ -n "$span" ] && [ "$seen_tp" = "00-4bf92f3577b34da6a3ce929d0e0e4736-$span-01" ] && [ "$span" != 00f067aa0ba902b7 ] &&
  ok "... and the span id of its own that stage.started records" || fail "span id" "$seen_tp / $span"
[ "$seen_ts $seen_ts2" = "vendor=a1,other@sys=b 2" ] && ok "the stage gets TRACESTATE as it was" || fail "TRACESTATE" "$seen_ts $seen_ts2"
echo "$seen_key" | grep -qx '[0-9a-f]\{64\}' && ok "the stage gets SC_IDEMPOTENCY_KEY" || fail "SC_IDEMPOTENCY_KEY" "$seen_key"
TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7 $sc run "$tmp/trace.json" --plain >"$tmp/out" 2>&1; check "a malformed TRACEPARENT is refused (exit 2)" 2 $? "$tmp/out"
contains "... with a message" "$tmp/out" "is not a W3C traceparent"
TRACEPARENT=$tp TRACESTATE='Bad=1' $sc run "$tmp/trace.json" --plain >"$tmp/out" 2>&1; check "a malformed TRACESTATE is refused (exit 2)" 2 $? "$tmp/out"
TRACESTATE='a=1' $sc recover "$tmp/trace.json" --log "$tmp/trace.jsonl" >"$tmp/out" 2>&1; check "recover refuses TRACESTATE without TRACEPARENT (exit 2)" 2 $? "$tmp/out"
rm -f "$tmp/trace"
TRACEPARENT=$tp $sc run "$tmp/trace.json" --plain >"$tmp/out" 2>&1
read -r other_tp other_rest <"$tmp/trace" || true
[ "${other_tp%-01}" != "${seen_tp%-01}" ] && ok "each run of a stage gets a new span id" || fail "span id reused" "$other_tp"

# recover: TRACEPARENT of its environment when set, else the trace the log recorded
write_pipeline "$tmp/retrace.json" '[{"name":"once","kind":"exec","env":{"D":"${config.dir}"},"run":"echo \"$TRACEPARENT ${TRACESTATE:-none}\" >> $D/retrace; test -f $D/retrace.ok"}]'
other=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00
for with in env log; do
  rm -f "$tmp/retrace" "$tmp/retrace.ok" "$tmp/retrace.jsonl"
  TRACEPARENT=$tp TRACESTATE=vendor=a1 $sc run "$tmp/retrace.json" --plain --log "$tmp/retrace.jsonl" >"$tmp/out" 2>&1
  touch "$tmp/retrace.ok"
  if [ $with = env ]; then
    TRACEPARENT=$other $sc recover "$tmp/retrace.json" --log "$tmp/retrace.jsonl" --plain >"$tmp/out" 2>&1
    want=00-0af7651916cd43dd8448eb211c80319c-*-00\ none
  else
    $sc recover "$tmp/retrace.json" --log "$tmp/retrace.jsonl" --plain >"$tmp/out" 2>&1
    want=00-4bf92f3577b34da6a3ce929d0e0e4736-*-01\ vendor=a1
  fi
  check "recover of a failed traced task exits 0 (trace from the $with)" 0 $? "$tmp/out"
  last=$(tail -n 1 "$tmp/retrace")
  case "$last" in
    $want) ok "... and its stage joins the trace of the $with, with its tracestate" ;;
    *) fail "... and its stage joins the trace of the $with, with its tracestate" "$(cat "$tmp/retrace")" ;;
  esac
done

# --- recovery after kill -9 of `stagecoach run` ---
stages='[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo one >> $D/ran"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo two >> $D/ran; echo $SC_IDEMPOTENCY_KEY >> $D/keys; sleep 1.5"},{"name":"three","kind":"exec","env":{"D":"${config.dir}"},"run":"echo three >> $D/ran"}]'
previous='[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-one >> $D/ran"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-two >> $D/ran"}]'
write_pipeline "$tmp/crash.json" "$stages" "$previous"
rm -f "$tmp/ran" "$tmp/crash.jsonl"
$sc run "$tmp/crash.json" --plain --log "$tmp/crash.jsonl" --fsync always >"$tmp/out" 2>&1 &
runner=$!
echo $runner >"$tmp/runner.pid"
for _ in $(seq 1 100); do grep -q two "$tmp/ran" 2>/dev/null && break; sleep 0.05; done
sleep 0.3
group=$(ps -o pid= --ppid $runner | head -n 1 | tr -d ' ')
kill -9 $runner; wait $runner 2>/dev/null
[ -n "$group" ] && kill -9 -- "-$group" 2>/dev/null # the stage's command, orphaned by the crash
size=$(wc -c <"$tmp/crash.jsonl")
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --dry-run >"$tmp/out" 2>&1; check "recover --dry-run exits 0" 0 $? "$tmp/out"
contains "the dry run prints the recovery plan" "$tmp/out" '"rerun"'
[ "$(wc -c <"$tmp/crash.jsonl")" = "$size" ] && ok "the dry run changes nothing" || fail "the dry run changes nothing"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --task nosuchtask >"$tmp/out" 2>&1; check "recover --task of an unknown task exits 2" 2 $? "$tmp/out"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --plain >"$tmp/out" 2>&1; check "recover after kill -9 completes (exit 0)" 0 $? "$tmp/out"
[ "$(grep -cx one "$tmp/ran")" = 1 ] && [ "$(grep -cx three "$tmp/ran")" = 1 ] && ok "the completed stage did not run again; the rest ran" || fail "stage runs" "$(cat "$tmp/ran")"
[ "$(wc -l <"$tmp/keys")" = 2 ] && [ "$(sort -u "$tmp/keys" | wc -l)" = 1 ] && ok "the stage in flight got the same SC_IDEMPOTENCY_KEY after kill -9 and recover" || fail "idempotency key across recovery" "$(cat "$tmp/keys")"
$sc recover "$tmp/crash.json" --log "$tmp/crash.jsonl" --plain >"$tmp/out" 2>&1; check "a second recover finds nothing (exit 0)" 0 $? "$tmp/out"

# rollback mode: a run that fails, recovered with --mode rollback using previous_config
write_pipeline "$tmp/rb.json" '[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo one >> $D/rb"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"exit 9"}]' \
  '[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-one >> $D/rb; test \"$SC_MODE\" = rollback"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-two >> $D/rb"}]'
$sc run "$tmp/rb.json" --plain --log "$tmp/rb.jsonl" >"$tmp/out" 2>&1; check "the failing run exits 1" 1 $? "$tmp/out"
$sc recover "$tmp/rb.json" --log "$tmp/rb.jsonl" --from one --dry-run >"$tmp/out" 2>&1; check "recover --from STAGE --dry-run exits 0" 0 $? "$tmp/out"
contains "--from one resumes at one: nothing skipped" "$tmp/out" '"skipped":.*\[\]'
contains "... and one is the first to run" "$tmp/out" '"rerun":.*\["one", "two"\]'
$sc recover "$tmp/rb.json" --log "$tmp/rb.jsonl" --from nope --dry-run >"$tmp/out" 2>&1; check "recover --from an unknown stage exits 2" 2 $? "$tmp/out"
contains "... and lists the stages" "$tmp/out" "unknown stage 'nope' (stages: one, two)"
$sc recover "$tmp/rb.json" --log "$tmp/rb.jsonl" --from one --mode compensate >"$tmp/out" 2>&1; check "--from with --mode compensate exits 2" 2 $? "$tmp/out"
$sc recover "$tmp/rb.json" --log "$tmp/rb.jsonl" --mode rollback --plain >"$tmp/out" 2>&1; check "recover --mode rollback exits 4 (rolled back)" 4 $? "$tmp/out"
grep -qx old-two "$tmp/rb" && ok "the rollback ran the previous config's stages with SC_MODE=rollback" || fail "rollback stages" "$(cat "$tmp/rb")"

# compensate mode: a failed run whose compensable stages are undone, last first
write_pipeline "$tmp/comp.json" '[{"name":"a","kind":"exec","env":{"D":"${config.dir}"},"run":"echo a >> $D/comp","compensate":"echo undo-a $SC_MODE >> $D/comp","effect":"compensable"},{"name":"b","kind":"exec","env":{"D":"${config.dir}"},"run":"echo b >> $D/comp"},{"name":"c","kind":"exec","env":{"D":"${config.dir}"},"run":"echo c >> $D/comp","compensate":"echo undo-c >> $D/comp","effect":"compensable"},{"name":"d","kind":"exec","env":{"D":"${config.dir}"},"run":"exit 7"}]'
$sc run "$tmp/comp.json" --plain --log "$tmp/comp.jsonl" >"$tmp/out" 2>&1; check "the run to compensate fails (exit 1)" 1 $? "$tmp/out"
$sc recover "$tmp/comp.json" --log "$tmp/comp.jsonl" --mode compensate --dry-run >"$tmp/out" 2>&1
contains "the dry run lists the stages to compensate, last first" "$tmp/out" '"compensated":.*\["c", "a"\]'
$sc recover "$tmp/comp.json" --log "$tmp/comp.jsonl" --mode compensate --plain >"$tmp/out" 2>&1; check "recover --mode compensate exits 4 (rolled back)" 4 $? "$tmp/out"
[ "$(tr '\n' ' ' <"$tmp/comp")" = "a b c undo-c undo-a compensate " ] && ok "the compensate commands ran in reverse with SC_MODE=compensate" || fail "compensation order" "$(cat "$tmp/comp")"
$sc recover "$tmp/comp.json" --log "$tmp/comp.jsonl" --mode compensate >"$tmp/out" 2>&1; check "a compensated task is finished (nothing to recover)" 0 $? "$tmp/out"
# killed while compensating: the log says so, and recover carries the compensation on by itself
sed 's/echo undo-c >> \$D\/comp/echo undo-c >> $D\/comp2; sleep 5/' "$tmp/comp.json" >"$tmp/comp2.json"
$sc run "$tmp/comp2.json" --plain --log "$tmp/comp2.jsonl" >/dev/null 2>&1
$sc recover "$tmp/comp2.json" --log "$tmp/comp2.jsonl" --mode compensate --plain >"$tmp/out" 2>&1 &
runner=$!
for _ in $(seq 1 100); do [ -s "$tmp/comp2" ] && break; sleep 0.05; done
group=$(ps -o pid= --ppid $runner | head -n 1 | tr -d ' ')
kill -9 $runner; wait $runner 2>/dev/null
[ -n "$group" ] && kill -9 -- "-$group" 2>/dev/null
$sc recover "$tmp/comp2.json" --log "$tmp/comp2.jsonl" --dry-run >"$tmp/out" 2>&1
contains "a compensation killed midway is recovered as a compensation" "$tmp/out" '"mode":.*"compensate"'

# a changed pipeline is refused
$sc run "$tmp/crash.json" --plain --log "$tmp/changed.jsonl" --task-id changed >/dev/null 2>&1 &
runner=$!
for _ in $(seq 1 100); do grep -q '"stage":"two"' "$tmp/changed.jsonl" 2>/dev/null && break; sleep 0.05; done
group=$(ps -o pid= --ppid $runner | head -n 1 | tr -d ' ')
kill -9 $runner; wait $runner 2>/dev/null
[ -n "$group" ] && kill -9 -- "-$group" 2>/dev/null # the stage's command, orphaned by the crash
sed 's/echo three/echo THREE/' "$tmp/crash.json" >"$tmp/changed.json"
$sc recover "$tmp/changed.json" --log "$tmp/changed.jsonl" --plain >"$tmp/out" 2>&1; check "recovery with a changed pipeline exits 2" 2 $? "$tmp/out"
contains "the refusal says the plan changed" "$tmp/out" "changed"
cp "$tmp/changed.jsonl" "$tmp/twoplans.jsonl"
$sc run "$tmp/good.json" --plain --log "$tmp/twoplans.jsonl" --task-id other-done >/dev/null 2>&1
size=$(wc -c <"$tmp/twoplans.jsonl")
$sc recover "$tmp/changed.json" --log "$tmp/twoplans.jsonl" --plain >"$tmp/out" 2>&1; check "a refused recovery exits 2" 2 $? "$tmp/out"
[ "$(wc -c <"$tmp/twoplans.jsonl")" = "$size" ] && ok "... and changes nothing in the log" || fail "a refused recovery wrote to the log" "$(tail -n 3 "$tmp/twoplans.jsonl" | head -c 800)"
sed 's/"plan":"t"/"plan":"other"/' "$tmp/good.json" >"$tmp/other.json"
$sc recover "$tmp/other.json" --log "$tmp/twoplans.jsonl" --plain >"$tmp/out" 2>&1; check "recover leaves another plan's tasks alone (exit 0)" 0 $? "$tmp/out"
contains "... and says so" "$tmp/out" "nothing to recover for plan 'other' .*(1 unfinished task of other plans)"
[ "$(wc -c <"$tmp/twoplans.jsonl")" = "$size" ] && ok "... without writing to the log" || fail "recover of another plan wrote to the log"
$sc run "$tmp/good.json" --plain --log "$tmp/twoplans.jsonl" --task-id other-done >"$tmp/out" 2>&1; check "run --task-id of a task already in the log exits 2" 2 $? "$tmp/out"
contains "... and names the task" "$tmp/out" "task 'other-done' is already in"
$sc run "$tmp/good.json" --plain --log "$tmp/quoted.jsonl" --task-id 'id "q" \x' >/dev/null 2>&1
$sc run "$tmp/good.json" --plain --log "$tmp/quoted.jsonl" --task-id 'id "q" \x' >"$tmp/out" 2>&1; check "... also an id the log holds escaped" 2 $? "$tmp/out"
[ "$(wc -c <"$tmp/twoplans.jsonl")" = "$size" ] && ok "... and writes nothing" || fail "a refused run wrote to the log"

# --- options and files that cannot work: exit 2, a message, no crash ---
$sc run "$tmp/good.json" --log "$tmp/f.jsonl" --fsync sometimes >"$tmp/out" 2>&1; check "run --fsync with a bad mode exits 2" 2 $? "$tmp/out"
contains "... and names the modes" "$tmp/out" "always, batch or none"
$sc run "$tmp/good.json" --fsync always >"$tmp/out" 2>&1; check "run --fsync without --log exits 2" 2 $? "$tmp/out"
$sc run "$tmp/good.json" --log "$tmp/no/such/dir/x.jsonl" >"$tmp/out" 2>&1; check "run with a log that cannot be opened exits 2" 2 $? "$tmp/out"
contains "... and says why" "$tmp/out" "No such file or directory"
$sc recover "$tmp/good.json" --log "$tmp/ok.jsonl" --fsync sometimes >"$tmp/out" 2>&1; check "recover --fsync with a bad mode exits 2" 2 $? "$tmp/out"
$sc recover "$tmp/good.json" --log "$tmp" >"$tmp/out" 2>&1; check "recover --log of a directory exits 2" 2 $? "$tmp/out"
contains "... and says why" "$tmp/out" "Is a directory"
$sc events "$tmp" >"$tmp/out" 2>&1; check "events of a directory exits 2" 2 $? "$tmp/out"
$sc verify "$tmp" >"$tmp/out" 2>&1; check "verify of a directory exits 2" 2 $? "$tmp/out"

# --- durability: one writer, only logs are written, an incomplete record is said ---
# Files that are not logs: refused (exit 2, "not a stagecoach log") and left byte for byte.
unchanged() { # unchanged NAME FILE COPY
  cmp -s "$2" "$3" && ok "$1" || fail "$1" "$(head -c 300 "$2")"
}
printf '{"plan":"t","config":{"stages":[{"name":"a","kind":"exec","run":"true"}]}}' >"$tmp/nonl.json"
cp "$tmp/nonl.json" "$tmp/nonl.copy"
$sc run "$tmp/nonl.json" --log "$tmp/nonl.json" --plain >"$tmp/out" 2>&1; check "run p.json --log p.json is refused (exit 2)" 2 $? "$tmp/out"
unchanged "... and the pipeline file is left as it is" "$tmp/nonl.json" "$tmp/nonl.copy"
cp "$tmp/good.json" "$tmp/good.copy"
$sc run "$tmp/good.json" --log "$tmp/good.json" --plain >"$tmp/out" 2>&1; check "run p.json --log p.json (with a newline) is refused (exit 2)" 2 $? "$tmp/out"
unchanged "... and left as it is" "$tmp/good.json" "$tmp/good.copy"
printf 'meeting at noon' >"$tmp/notes.txt"; cp "$tmp/notes.txt" "$tmp/notes.copy"
$sc recover "$tmp/good.json" --log "$tmp/notes.txt" --plain >"$tmp/out" 2>&1; check "recover --log notes.txt is refused (exit 2)" 2 $? "$tmp/out"
contains "... as not a stagecoach log" "$tmp/out" "not a stagecoach log"
unchanged "... and notes.txt is left as it is" "$tmp/notes.txt" "$tmp/notes.copy"
$sc run "$tmp/good.json" --log "$tmp/notes.txt" --plain >"$tmp/out" 2>&1; check "run --log notes.txt is refused (exit 2)" 2 $? "$tmp/out"
unchanged "... and notes.txt is left as it is" "$tmp/notes.txt" "$tmp/notes.copy"
printf 'line one\nline two\n' >"$tmp/lines.txt"; cp "$tmp/lines.txt" "$tmp/lines.copy"
$sc recover "$tmp/good.json" --log "$tmp/lines.txt" --plain >"$tmp/out" 2>&1; check "recover --log of a text file with lines is refused (exit 2)" 2 $? "$tmp/out"
unchanged "... and the file is left as it is" "$tmp/lines.txt" "$tmp/lines.copy"
$sc verify /dev/zero >"$tmp/out" 2>&1; check "verify /dev/zero exits 2" 2 $? "$tmp/out"
contains "... as not a stagecoach log" "$tmp/out" "not a stagecoach log"
mkfifo "$tmp/nowriter.json"
timeout 20 $sc validate "$tmp/nowriter.json" >"$tmp/out" 2>&1; check "validate of a FIFO no one writes is refused (exit 2), not stalled in open" 2 $? "$tmp/out"
contains "... as an empty file" "$tmp/out" "the file is empty"
timeout 20 $sc validate <(cat "$tmp/good.json") >"$tmp/out" 2>&1; check "validate of a pipe with its writer reads it (exit 0)" 0 $? "$tmp/out"
$sc verify "$tmp/notes.txt" >"$tmp/out" 2>&1; check "verify of a file with no event line exits 2" 2 $? "$tmp/out"
contains "... as not a stagecoach log" "$tmp/out" "not a stagecoach log"
$sc run "$tmp/good.json" --log /dev/null --plain >"$tmp/out" 2>&1; check "run --log /dev/null (a device) is refused (exit 2)" 2 $? "$tmp/out"
# The pipeline is loaded and checked before the log is opened.
$sc run "$tmp/bad.json" --log "$tmp/never.jsonl" --plain >"$tmp/out" 2>&1; check "run of a bad pipeline with --log exits 2" 2 $? "$tmp/out"
[ ! -e "$tmp/never.jsonl" ] && ok "... and creates no log" || fail "a bad pipeline created its log"
$sc recover "$tmp/good.json" --log "$tmp/never.jsonl" --plain >"$tmp/out" 2>&1; check "recover of a missing log exits 2" 2 $? "$tmp/out"
[ ! -e "$tmp/never.jsonl" ] && ok "... and creates none" || fail "recover created a log"
# A command with nothing to do modifies nothing, not even a torn tail.
cp "$tmp/ok.jsonl" "$tmp/idle.jsonl"; printf '{"specversion":"1.0","id":"torn' >>"$tmp/idle.jsonl"; cp "$tmp/idle.jsonl" "$tmp/idle.copy"
$sc recover "$tmp/ok.json" --log "$tmp/idle.jsonl" --plain >"$tmp/out" 2>&1; check "recover with nothing to do exits 0" 0 $? "$tmp/out"
unchanged "... and leaves the log byte for byte (the torn tail too)" "$tmp/idle.jsonl" "$tmp/idle.copy"
# --task-id must be valid UTF-8: bad bytes would be stored changed and two ids could collide.
$sc run "$tmp/good.json" --log "$tmp/utf.jsonl" --task-id "$(printf 'caf\xe9')" --plain >"$tmp/out" 2>&1; check "a --task-id that is not UTF-8 is refused (exit 2)" 2 $? "$tmp/out"
contains "... and says why" "$tmp/out" "UTF-8"
[ ! -e "$tmp/utf.jsonl" ] && ok "... before the log is opened" || fail "a refused --task-id created the log"
$sc run "$tmp/good.json" --log "$tmp/utf.jsonl" --task-id "café-ü" --plain >"$tmp/out" 2>&1; check "a UTF-8 --task-id is taken (exit 0)" 0 $? "$tmp/out"

# One writer: a second recover while the first holds the log is refused and changes nothing.
write_pipeline "$tmp/lock.json" '[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"true"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo two >> $D/lockran; sleep 3"}]'
rm -f "$tmp/lockran"
$sc run "$tmp/lock.json" --plain --log "$tmp/lock.jsonl" >/dev/null 2>&1 &
first=$!
for _ in $(seq 1 100); do [ -s "$tmp/lockran" ] && break; sleep 0.05; done
cp "$tmp/lock.jsonl" "$tmp/lock.copy"
$sc recover "$tmp/lock.json" --log "$tmp/lock.jsonl" --plain >"$tmp/out" 2>&1; check "recover of a log another process writes is refused (exit 2)" 2 $? "$tmp/out"
contains "... naming the holder's pid" "$tmp/out" "locked by pid $first"
unchanged "... and the log is unchanged" "$tmp/lock.jsonl" "$tmp/lock.copy"
wait $first; check "the first writer finishes (exit 0)" 0 $? /dev/null
[ "$(grep -c two "$tmp/lockran")" = 1 ] && ok "... and no stage ran twice" || fail "a stage ran twice" "$(cat "$tmp/lockran")"
$sc verify "$tmp/lock.jsonl" >"$tmp/out" 2>&1; check "... and the chain is intact" 0 $? "$tmp/out"

# No stage starts before its task is on record: the first write and sync of the log come before
# the first execve of a stage's command.
if command -v strace >/dev/null; then
  rm -f "$tmp/order.jsonl"
  ASAN_OPTIONS=detect_leaks=0 strace -f -tt -o "$tmp/trace" -e trace=write,fdatasync,execve \
    "$sc" run "$tmp/good.json" --plain --log "$tmp/order.jsonl" >"$tmp/out" 2>&1
  check "run under strace exits 0" 0 $? "$tmp/out"
  awk '/execve\("\/bin\/sh"/ && !e {e = NR} /fdatasync\(/ && !s {s = NR} END {exit !(s && e && s < e)}' "$tmp/trace" &&
    ok "the log's first sync comes before the first stage's execve" ||
    fail "the first stage ran before its task was on record" "$(grep -E 'execve|fdatasync' "$tmp/trace" | head -8)"
  # A failed fsync of a new log's directory is reported like any failed sync.
  rm -f "$tmp/dirsync.jsonl" "$tmp/dirsyncran"
  write_pipeline "$tmp/dirsync.json" '[{"name":"a","kind":"exec","env":{"D":"${config.dir}"},"run":"echo a >> $D/dirsyncran"}]'
  ASAN_OPTIONS=detect_leaks=0 strace -f -o /dev/null -e trace=fsync -e inject=fsync:error=EIO \
    "$sc" run "$tmp/dirsync.json" --plain --log "$tmp/dirsync.jsonl" >"$tmp/out" 2>&1
  check "a failed fsync of the new log's directory exits 5" 5 $? "$tmp/out"
  contains "... and names the directory sync" "$tmp/out" "fsync (the directory of) $tmp/dirsync.jsonl: Input/output error"
  [ ! -e "$tmp/dirsyncran" ] && ok "... and no stage ran (task.created was not on record)" || fail "a stage ran"
  [ ! -s "$tmp/dirsync.jsonl" ] && ok "... and the log keeps only what was acknowledged (nothing)" || fail "the log kept unacknowledged lines" "$(head -c 300 "$tmp/dirsync.jsonl")"
  contains "... and says that nothing of the task is in the log, so the run is to be done again" "$tmp/out" "no event in the log, so no stage of it ran"
  # An empty file given as a log may be a new one whose creator died before its first sync: its
  # directory is synced as a new log's is (here that sync fails, so it shows).
  : >"$tmp/dirsync.jsonl"
  ASAN_OPTIONS=detect_leaks=0 strace -f -o /dev/null -e trace=fsync -e inject=fsync:error=EIO \
    "$sc" run "$tmp/dirsync.json" --plain --log "$tmp/dirsync.jsonl" >"$tmp/out" 2>&1
  check "an empty existing log gets its directory synced too (the injected failure exits 5)" 5 $? "$tmp/out"
else
  fail "strace is needed for the ordering and directory-sync cases (apt-get install strace)"
fi

# A terminal event that cannot be stored: exit 5, the missing events named, and recover finishes.
big=$(head -c 6000 /dev/zero | tr '\0' b)
write_pipeline "$tmp/full.json" '[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo one >> $D/fullran"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo two >> $D/fullran; printf \"{\\\"big\\\":\\\"'"$big"'\\\"}\" > $SC_OUTPUT"}]'
$sc run "$tmp/full.json" --plain --log "$tmp/full-clean.jsonl" --task-id full-task >/dev/null 2>&1
before_last=$(head -n -1 "$tmp/full-clean.jsonl" | wc -c)
blocks=$(((before_last + 2048) / 1024)) # room for all but task.completed (6 KB of context)
rm -f "$tmp/fullran"
(trap '' XFSZ; ulimit -f "$blocks"; exec "$sc" run "$tmp/full.json" --plain --log "$tmp/full.jsonl" --task-id full-task) >"$tmp/out" 2>&1
check "a run whose task.completed was not stored exits 5" 5 $? "$tmp/out"
contains "... and names what was not stored" "$tmp/out" "not stored: task full-task, events #[0-9]* task.completed"
$sc verify "$tmp/full.jsonl" >"$tmp/out2" 2>&1; check "... and its log verifies" 0 $? "$tmp/out2"
$sc recover "$tmp/full.json" --log "$tmp/full.jsonl" --plain >"$tmp/out" 2>&1; check "recover then finishes the task (exit 0)" 0 $? "$tmp/out"
[ "$(tr '\n' ' ' <"$tmp/fullran")" = "one two " ] && ok "... without running a stage again" || fail "stages ran again" "$(cat "$tmp/fullran")"

# The file size limit (ulimit -f) is a failed write like any other: exit 5, not death by SIGXFSZ.
rm -f "$tmp/fullran" "$tmp/xfsz.jsonl"
(ulimit -f "$blocks"; exec "$sc" run "$tmp/full.json" --plain --log "$tmp/xfsz.jsonl" --task-id xfsz-task) >"$tmp/out" 2>&1
check "reaching ulimit -f exits 5 (SIGXFSZ is ignored)" 5 $? "$tmp/out"
contains "... and names what was not stored" "$tmp/out" "not stored: task xfsz-task"
$sc verify "$tmp/xfsz.jsonl" >"$tmp/out2" 2>&1; check "... and its log verifies" 0 $? "$tmp/out2"

# A crash during the first write of a new log leaves one line without its newline: that is a torn
# tail of ours, cut by the next writer, not a file to refuse for ever.
printf '{"specversion":"1.0","id":"torn-first/1","source":"stagecoach","type":"stagecoach.task.created","time":"2026-' >"$tmp/torn1.jsonl"
$sc verify "$tmp/torn1.jsonl" >"$tmp/out" 2>&1; check "verify accepts a log torn in its first line (exit 0)" 0 $? "$tmp/out"
$sc run "$tmp/good.json" --plain --log "$tmp/torn1.jsonl" >"$tmp/out" 2>&1; check "run on a log torn in its first line cuts the tail and runs (exit 0)" 0 $? "$tmp/out"
$sc verify "$tmp/torn1.jsonl" >"$tmp/out" 2>&1; check "... and the log verifies after it" 0 $? "$tmp/out"
printf 'some notes, no newline' >"$tmp/notes1.txt"
$sc run "$tmp/good.json" --plain --log "$tmp/notes1.txt" >"$tmp/out" 2>&1; check "a one-line text file is still not a log (exit 2)" 2 $? "$tmp/out"
# Someone else's CloudEvents file opens as our lines do; without a newline it is still not a log.
printf '{"specversion":"1.0","id":"a1","source":"/my/app","type":"com.example.order","data":{"keep":"me"}}' >"$tmp/ce.json"
cp "$tmp/ce.json" "$tmp/ce.copy"
$sc run "$tmp/good.json" --plain --log "$tmp/ce.json" >"$tmp/out" 2>&1; check "a one-line CloudEvents file of another source is refused (exit 2)" 2 $? "$tmp/out"
cmp -s "$tmp/ce.json" "$tmp/ce.copy" && ok "... and left byte for byte as it is" || fail "the CloudEvents file was changed"
$sc verify "$tmp/ce.json" >"$tmp/out" 2>&1; check "... and verify says it is not a log (exit 2)" 2 $? "$tmp/out"
# A valid log followed by bytes that no writer of ours left: verify and run agree it is no log.
cp "$tmp/ok.jsonl" "$tmp/junk.jsonl"; head -c 3000 /dev/zero | tr '\0' x >>"$tmp/junk.jsonl"
$sc verify "$tmp/junk.jsonl" >"$tmp/out" 2>&1; check "verify of a log with a tail no writer left exits 2" 2 $? "$tmp/out"
$sc run "$tmp/good.json" --plain --log "$tmp/junk.jsonl" >"$tmp/out" 2>&1; check "... and run refuses it alike (exit 2)" 2 $? "$tmp/out"

# Readers take no lock and read while a writer cuts a torn tail: they see the shorter file, they
# never die of SIGBUS (a mapping of the pages past the new end would).
cp "$tmp/ok.jsonl" "$tmp/bus.jsonl"
{ printf '{"specversion":"1.0",'; head -c 30000000 /dev/zero | tr '\0' x; } >>"$tmp/bus.jsonl"
(for _ in $(seq 1 40); do $sc verify "$tmp/bus.jsonl" >/dev/null 2>&1; echo $?; done) >"$tmp/bus.rc" &
readers=$!
sleep 0.2
$sc run "$tmp/good.json" --plain --log "$tmp/bus.jsonl" >"$tmp/out" 2>&1; check "a run cuts a 30 MB torn tail while verify reads (exit 0)" 0 $? "$tmp/out"
wait $readers
grep -qv '^[01]$' "$tmp/bus.rc" && fail "a reader died while the tail was cut" "$(sort "$tmp/bus.rc" | uniq -c)" || ok "... and no reader died (every verify exited 0 or 1)"

# Tasks of a pipeline without "plan" and of one with it share a log: each recover takes its own.
write_pipeline "$tmp/named.json" '[{"name":"n1","kind":"exec","env":{"D":"${config.dir}"},"run":"test -f $D/plans.ok && echo named >> $D/plans"}]'
printf '{"config":{"dir":"%s","stages":[{"name":"u1","kind":"exec","env":{"D":"${config.dir}"},"run":"test -f $D/plans.ok && echo unnamed >> $D/plans"}]}}\n' "$tmp" >"$tmp/unnamed.json"
rm -f "$tmp/plans" "$tmp/plans.ok" "$tmp/plans.jsonl"
$sc run "$tmp/named.json" --plain --log "$tmp/plans.jsonl" >/dev/null 2>&1
$sc run "$tmp/unnamed.json" --plain --log "$tmp/plans.jsonl" >/dev/null 2>&1
touch "$tmp/plans.ok"
$sc recover "$tmp/named.json" --log "$tmp/plans.jsonl" --plain >"$tmp/out" 2>&1; check "recover of a named pipeline leaves a plan-less task alone (exit 0)" 0 $? "$tmp/out"
$sc recover "$tmp/unnamed.json" --log "$tmp/plans.jsonl" --plain >"$tmp/out" 2>&1; check "recover of a plan-less pipeline takes only its own task (exit 0)" 0 $? "$tmp/out"
[ "$(tr '\n' ' ' <"$tmp/plans")" = "named unnamed " ] && ok "... each task recovered once, by its own pipeline" || fail "the tasks were recovered by the wrong pipeline" "$(cat "$tmp/plans")"

# events reads only logs: a device is refused at once, a file without one event is not a log.
timeout 20 $sc events /dev/zero >"$tmp/out" 2>&1; check "events /dev/zero is refused (exit 2), not read for ever" 2 $? "$tmp/out"
$sc events "$tmp/notes.txt" >"$tmp/out" 2>&1; check "events of a text file is refused (exit 2)" 2 $? "$tmp/out"

# --log naming where the command's own output goes would mix progress lines into the log.
$sc run "$tmp/good.json" --plain --log /dev/stdout >"$tmp/so.txt" 2>&1; check "--log /dev/stdout with stdout in a file is refused (exit 2)" 2 $? "$tmp/so.txt"

# A second SIGINT exits 130 and writes no terminal event: recover carries the task on.
write_pipeline "$tmp/twice.json" '[{"name":"slow","kind":"exec","env":{"D":"${config.dir}"},"run":"echo slow >> $D/twiceran; echo $$ > $D/twice.pid; trap \"\" TERM; sleep 1.5","kill_grace_ms":5000},{"name":"after","kind":"exec","env":{"D":"${config.dir}"},"run":"echo after >> $D/twiceran"}]'
rm -f "$tmp/twiceran" "$tmp/twice.pid"
$sc run "$tmp/twice.json" --plain --log "$tmp/twice.jsonl" >"$tmp/out" 2>&1 &
runner=$!
for _ in $(seq 1 100); do [ -s "$tmp/twice.pid" ] && break; sleep 0.05; done
kill -INT $runner; sleep 0.3; kill -INT $runner
wait $runner; check "a second SIGINT exits 130" 130 $? "$tmp/out"
grep -q '"type":"stagecoach.task.cancelled"' "$tmp/twice.jsonl" && fail "the log holds task.cancelled after a second SIGINT" || ok "... and writes no terminal event"
pid=$(cat "$tmp/twice.pid" 2>/dev/null)
[ -n "$pid" ] && gone "$pid" && ok "... and kills the command" || fail "the command outlived the second SIGINT"
$sc recover "$tmp/twice.json" --log "$tmp/twice.jsonl" --plain >"$tmp/out" 2>&1; check "recover carries the task on (exit 0)" 0 $? "$tmp/out"
contains "... to its end" "$tmp/out" "COMPLETED"
[ "$(tail -n 1 "$tmp/twiceran")" = after ] && ok "... running the stages left" || fail "recover did not run the rest" "$(cat "$tmp/twiceran")"

# SIGINT during a rollback, which cannot be cancelled: its commands are not stopped, it finishes.
write_pipeline "$tmp/rbint.json" '[{"name":"one","kind":"exec","run":"true"},{"name":"two","kind":"exec","run":"exit 9"}]' \
  '[{"name":"one","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-one >> $D/rbintran; sleep 1"},{"name":"two","kind":"exec","env":{"D":"${config.dir}"},"run":"echo old-two >> $D/rbintran"}]'
rm -f "$tmp/rbintran"
$sc run "$tmp/rbint.json" --plain --log "$tmp/rbint.jsonl" >/dev/null 2>&1
$sc recover "$tmp/rbint.json" --log "$tmp/rbint.jsonl" --mode rollback --plain >"$tmp/out" 2>&1 &
runner=$!
for _ in $(seq 1 100); do [ -s "$tmp/rbintran" ] && break; sleep 0.05; done
kill -INT $runner
wait $runner; check "SIGINT during a rollback lets it finish (exit 4)" 4 $? "$tmp/out"
[ "$(tr '\n' ' ' <"$tmp/rbintran")" = "old-one old-two " ] && ok "... running every rollback stage" || fail "the rollback was cut short" "$(cat "$tmp/rbintran")"

# --- what a command can do to the command that runs it ---
# An attempt whose command outlives the engine's timeout (it ignores SIGTERM) is not overlapped
# by the next attempt of the same stage: that one starts when the first command is gone.
write_pipeline "$tmp/overlap.json" '[{"name":"to","kind":"exec","env":{"D":"${config.dir}"},"run":"trap \"\" TERM; echo start $SC_ATTEMPT >> $D/overlap; [ $SC_ATTEMPT = 1 ] && sleep 0.9; echo end $SC_ATTEMPT >> $D/overlap","timeout_ms":600,"kill_grace_ms":3000,"retry":{"max_attempts":2}}]'
rm -f "$tmp/overlap"
timeout 30 $sc run "$tmp/overlap.json" --plain >"$tmp/out" 2>&1; check "a retry after a timeout completes (exit 0)" 0 $? "$tmp/out"
[ "$(tr '\n' ' ' <"$tmp/overlap")" = "start 1 end 1 start 2 end 2 " ] && ok "... and its two attempts never ran at once" ||
  fail "the retry overlapped the timed-out attempt" "$(cat "$tmp/overlap")"

# SIGINT while the timed-out attempt's command still runs (the retry waits for it): the task is
# cancelled, no retry starts, and that command does not outlive stagecoach.
write_pipeline "$tmp/sigwait.json" '[{"name":"to","kind":"exec","env":{"D":"${config.dir}"},"run":"trap \"\" TERM; echo $$ > $D/sigwait.pid; echo start >> $D/sigwait; sleep 1.5; echo end >> $D/sigwait","timeout_ms":300,"kill_grace_ms":3000,"retry":{"max_attempts":4}}]'
rm -f "$tmp/sigwait" "$tmp/sigwait.pid"
$sc run "$tmp/sigwait.json" --plain --log "$tmp/sigwait.jsonl" >"$tmp/out" 2>&1 &
runner=$!
for _ in $(seq 1 100); do [ -s "$tmp/sigwait" ] && break; sleep 0.05; done
sleep 0.45
kill -INT $runner
wait $runner; check "SIGINT while a timed-out command still runs cancels (exit 3)" 3 $? "$tmp/out"
[ "$(grep -c '^start$' "$tmp/sigwait")" = 1 ] && ok "... and no retry started" || fail "a retry started after SIGINT" "$(cat "$tmp/sigwait")"
pid=$(cat "$tmp/sigwait.pid" 2>/dev/null)
[ -n "$pid" ] && gone "$pid" && ok "... and the timed-out command did not outlive stagecoach" || fail "the timed-out command outlived stagecoach"

# Started with stdout, stderr or stdin closed: the loop's own descriptors must not take 0-2.
$sc run "$tmp/good.json" --plain --log "$tmp/closed.jsonl" >&- 2>&- <&-; check "run with 0, 1 and 2 closed exits 0" 0 $?
$sc verify "$tmp/closed.jsonl" >"$tmp/out" 2>&1; check "... and its log verifies" 0 $? "$tmp/out"

# The private folders a stagecoach killed with -9 left (they hold the context) go at the next
# start; one of a live process stays.
sh -c 'exit 0' & dead=$!; wait $dead
mkdir -p "$tmp/stagecoach-exec-$dead-AbCdEf" "$tmp/stagecoach-exec-$$-GhIjKl"
echo '{"secret":"x"}' >"$tmp/stagecoach-exec-$dead-AbCdEf/context.json"
$sc run "$tmp/good.json" --plain >"$tmp/out" 2>&1; check "a run with stale private folders about exits 0" 0 $? "$tmp/out"
[ ! -e "$tmp/stagecoach-exec-$dead-AbCdEf" ] && ok "... and removed the folder of the process that is gone" || fail "the stale folder of a dead run is still there"
[ -d "$tmp/stagecoach-exec-$$-GhIjKl" ] && ok "... and kept the folder of a live process" || fail "the folder of a live process was removed"
rmdir "$tmp/stagecoach-exec-$$-GhIjKl"

# $SC_OUTPUT replaced by a FIFO (or anything but a regular file) fails the stage; it never blocks.
write_pipeline "$tmp/fifo.json" '[{"name":"f","kind":"exec","run":"rm \"$SC_OUTPUT\"; mkfifo \"$SC_OUTPUT\""}]'
timeout 20 $sc run "$tmp/fifo.json" --plain >"$tmp/out" 2>&1; check "a FIFO as \$SC_OUTPUT fails the stage (exit 1), no hang" 1 $? "$tmp/out"
contains "... saying it is not a regular file" "$tmp/out" "not a regular file"

# A reader of our output that goes away does not end the run: the run and its commands carry on.
write_pipeline "$tmp/head.json" '[{"name":"p","kind":"exec","env":{"D":"${config.dir}"},"run":"for i in 1 2 3 4 5 6 7 8; do echo progress $i; sleep 0.05; done; echo done > $D/head.done"}]'
rm -f "$tmp/head.done"
(timeout 30 $sc run "$tmp/head.json" --plain --log "$tmp/head.jsonl"; echo $? >"$tmp/head.rc") | head -n 1 >/dev/null
check "a run whose stdout closed still exits 0 (no SIGPIPE)" 0 "$(cat "$tmp/head.rc")"
[ -s "$tmp/head.done" ] && ok "... and its command ran to its end" || fail "the command died with the reader"
grep -q '"stagecoach.task.completed"' "$tmp/head.jsonl" && ok "... and the log holds task.completed" || fail "no task.completed in the log"

# A command in a session of its own: reading /dev/tty fails at once instead of stopping it.
write_pipeline "$tmp/tty.json" '[{"name":"t","kind":"exec","run":"if read x < /dev/tty; then echo read; else echo no-terminal; fi"}]'
timeout 20 script -qec "exec $sc run $tmp/tty.json --plain --no-prompt" /dev/null </dev/null >"$tmp/out" 2>&1
check "a command that reads /dev/tty under a terminal is not stopped (exit 0)" 0 $? "$tmp/out"
contains "... it has no controlling terminal" "$tmp/out" "no-terminal"

# A script that begins with '-' is the script, not an option of the shell.
write_pipeline "$tmp/dash.json" '[{"name":"d","kind":"exec","run":"-x"}]'
$sc run "$tmp/dash.json" --plain >"$tmp/out" 2>&1; check "a script '-x' is run as a command (exit 1: not found)" 1 $? "$tmp/out"
contains "... the shell looked for the command -x" "$tmp/out" "\-x: not found"

# A relative TMPDIR is not used (the command runs in its own cwd): $SC_OUTPUT still arrives.
mkdir -p "$tmp/rel/reltmp" "$tmp/rel/work"
write_pipeline "$tmp/rel/rel.json" '[{"name":"r","kind":"exec","cwd":"work","run":"cat \"$SC_CONTEXT_FILE\" >/dev/null && echo \"{\\\"a\\\":1}\" > \"$SC_OUTPUT\""},{"name":"s","kind":"exec","args":["${context.a}"],"run":"test \"$1\" = 1"}]'
sc_path=$(cd "$(dirname "$sc")" && pwd)/$(basename "$sc")
(cd "$tmp/rel" && TMPDIR=reltmp "$sc_path" run rel.json --plain >"$tmp/out" 2>&1); check "a relative TMPDIR still gives working SC_OUTPUT and SC_CONTEXT_FILE" 0 $? "$tmp/out"
[ -z "$(ls -A "$tmp/rel/reltmp")" ] && ok "... and nothing went to the relative folder" || fail "the relative TMPDIR was used"

# An empty TRACESTATE (or TRACEPARENT), as `export TRACESTATE=` leaves it, is the same as unset.
TRACESTATE= TRACEPARENT= $sc run "$tmp/good.json" --plain >"$tmp/out" 2>&1; check "empty TRACEPARENT and TRACESTATE are as unset (exit 0)" 0 $? "$tmp/out"

# The wrong file as a pipeline: a device that never ends is refused, not read into memory.
timeout 20 $sc validate /dev/zero >"$tmp/out" 2>&1; check "validate /dev/zero is refused (exit 2)" 2 $? "$tmp/out"
contains "... as larger than a pipeline can be" "$tmp/out" "not a pipeline file"

# --- verify ---
cp "$tmp/ok.jsonl" "$tmp/corrupt.jsonl"
sed -i '3s/"seq":3/"seq":4/' "$tmp/corrupt.jsonl"
$sc verify "$tmp/corrupt.jsonl" >"$tmp/out" 2>&1; check "verify of an edited log exits 1" 1 $? "$tmp/out"
contains "verify names the first bad line" "$tmp/out" "line 3"
echo "1..$n"
