#!/usr/bin/env bash
# The command line's SQLite store, as TAP: run and recover with --db (alone and beside --log),
# --store, restore from the 2nd of 5 checkpoints, checkpoints on a log and on a database, a
# hand-edited checkpoint row found on read, retention that keeps what recovery needs, import, and
# the hostile cases: a second writer, the same file as log and database, wrong files, a database
# of a newer version, a reused task id, retain beside a run.
sc=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tmp=$(mktemp -d)
bg=()
cleanup() { local p; for p in "${bg[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
cd "$tmp" || exit 1
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); echo "not ok $n - $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | head -c 2000 | sed 's/^/# /'; }
check() { if eval "$2"; then ok "$1"; else fail "$1" "$(cat out 2>/dev/null)"; fi; }
echo "1..22"

# Five stages; s3 kills the command (kill -9 of its parent: a crash) until the file "go" exists;
# each stage appends its name to ran and outputs {"outN":N}.
pipeline() {
  python3 - "$1" "$tmp" <<'PY'
import json, sys
path, tmp = sys.argv[1], sys.argv[2]
stages = []
for i in range(1, 6):
    run = f"echo s{i} >> {tmp}/ran; "
    if i == 3:
        run += f"test -f {tmp}/go || kill -9 $PPID; "
    run += "echo '{\"out%d\":%d}'" % (i, i)
    stages.append({"name": f"s{i}", "kind": "exec", "run": run})
json.dump({"plan": "five", "tenant": "acme", "config": {"stages": stages}}, open(path, "w"))
PY
}
pipeline p.json
printf '{"plan":"slow","config":{"stages":[{"name":"wait","kind":"exec","run":"sleep 3"}]}}\n' >slow.json

{ "$sc" run p.json --db job.db --log job.jsonl --task-id job --plain >out 2>&1; } 2>/dev/null
check "a run with --db and --log is killed in s3" '[ $? = 137 ]'
"$sc" checkpoints --db job.db job >db.list 2>out && "$sc" checkpoints --log job.jsonl job >log.list 2>>out
check "the database and the log list the same checkpoints" 'cmp -s db.list log.list && [ "$(wc -l <db.list)" = 2 ]'
"$sc" checkpoints --db job.db job --latest --json >db.latest && "$sc" checkpoints --store jsonl:job.jsonl job --latest --json >log.latest
check "--latest answers the same from both, with the context" 'cmp -s db.latest log.latest && grep -q "\"context\"" db.latest'
touch go; : >ran
"$sc" recover p.json --db job.db --plain >out 2>&1
check "recover --db alone finishes the task" '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "s3,s4,s5," ]'
"$sc" recover p.json --db job.db --plain >out 2>&1
check "a further recover --db finds nothing" 'grep -q "nothing to recover" out'

# Restore from the 2nd of 5 checkpoints of a finished task.
"$sc" run p.json --store sqlite:five.db --task-id five --plain >out 2>&1
"$sc" checkpoints --db five.db five >list 2>&1
second=$(sed -n 2p list | awk '{ print $1 }')
: >ran
"$sc" recover p.json --db five.db --from-checkpoint "$second" --plain >out 2>&1
check "restore from the 2nd of 5 checkpoints ($second) re-runs s3, s4, s5 only" \
  '[ $? = 0 ] && [ "$(wc -l <list)" = 5 ] && [ "$(tr "\n" , <ran)" = "s3,s4,s5," ]'
"$sc" recover p.json --db five.db --from-checkpoint five/999 >out 2>&1
check "an unknown checkpoint is refused (exit 2)" '[ $? = 2 ] && grep -q "no checkpoint" out'
"$sc" recover p.json --log job.jsonl --from-checkpoint "$second" >out 2>&1
check "--from-checkpoint without --db is a usage error" '[ $? = 2 ]'

# A hand-edited checkpoint row.
cp five.db edited.db
python3 - edited.db <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("UPDATE checkpoints SET output='{\"out5\":\"forged\"}' WHERE stage='s5'")
c.commit()
PY
"$sc" checkpoints --db edited.db five --latest >out 2>&1
check "a changed checkpoint row is reported (exit 1), not shown" '[ $? = 1 ] && grep -q "changed row" out && ! grep -q forged out'
"$sc" recover p.json --db edited.db --from-checkpoint five/12 >out 2>&1
check "restore from the changed checkpoint is refused" '[ $? != 0 ] && grep -qi "digest\|changed" out'

# Retention keeps what recovery needs.
rm -f go
{ "$sc" run p.json --db keep.db --task-id keep --plain >out 2>&1; } 2>/dev/null
"$sc" retain --db keep.db --keep-last 1 --max-age 1ms >out 2>&1
check "retain keeps the latest checkpoint of the unfinished task" \
  '[ $? = 0 ] && [ "$("$sc" checkpoints --db keep.db keep | wc -l)" = 1 ]'
touch go; : >ran
"$sc" recover p.json --db keep.db --plain >out 2>&1
check "recovery after retention resumes after s2" '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "s3,s4,s5," ]'
"$sc" retain --db keep.db --max-age 1ms >out 2>&1
check "retain deletes the events of the finished tasks and says how long it held the database" \
  'grep -q "deleted [0-9]* checkpoints and [1-9][0-9]* events" out && grep -q longest out'

# Import.
"$sc" import job.jsonl --db imported.db >out 2>&1 && "$sc" import job.jsonl --store sqlite:imported.db >>out 2>&1
"$sc" checkpoints --db imported.db job >imp.list
check "import, twice, answers as the log does" 'grep -q "imported 0 events" out && cmp -s imp.list log.list'

# Hostile cases.
"$sc" run slow.json --db busy.db --plain >slow.out 2>&1 &
bg+=($!)
for _ in $(seq 1 100); do [ -s busy.db ] && break; sleep 0.05; done
"$sc" run slow.json --db busy.db --plain >out 2>&1
check "a second writer is refused while a run holds the database" '[ $? = 2 ] && grep -q "open for writing" out'
"$sc" retain --db busy.db --keep-last 1 >out 2>&1
check "retain beside a run is refused" '[ $? = 2 ] && grep -q "open for writing" out'
wait "${bg[0]}"
check "the first run completes regardless" '[ $? = 0 ]'
"$sc" run p.json --log same.x --db same.x >out 2>&1
check "the same file as log and database is refused" '[ $? = 2 ]'
cp p.json before.json
"$sc" run p.json --db p.json >out 2>&1
check "the pipeline file as database is refused and unchanged" '[ $? = 2 ] && cmp -s p.json before.json'
echo "these are notes" >notes.txt
"$sc" checkpoints --db notes.txt job >out 2>&1
check "a file that is not a database is refused and left as it is" \
  '[ $? = 2 ] && [ "$(cat notes.txt)" = "these are notes" ]'
cp five.db newer.db
python3 -c "import sqlite3; c=sqlite3.connect('newer.db'); c.execute('UPDATE schema_version SET version=7'); c.commit()"
"$sc" recover p.json --db newer.db >out 2>&1
check "a database of a newer version is refused, naming both versions" '[ $? = 2 ] && grep -q "schema version 7" out'
"$sc" run p.json --db five.db --task-id five >out 2>&1
check "a task id the database holds already is refused" '[ $? = 2 ] && grep -q "already in five.db" out'
