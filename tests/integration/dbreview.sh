#!/usr/bin/env bash
# The SQLite store's commands against what a review found, as TAP: retention that takes a task
# whole (by its end) and keeps a recovered chain superseded, ages too long to count, task ids
# longer than any buffer, --db on our own stdout, on a FIFO, on a directory, and a log reused
# under the id an import already holds.
sc=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tmp=$(mktemp -d)
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
cd "$tmp" || exit 1
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); echo "not ok $n - $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | head -c 2000 | sed 's/^/# /'; }
check() { if eval "$2"; then ok "$1"; else fail "$1" "$(cat out 2>/dev/null)"; fi; }

# Three stages a, b, c; each appends its name to ran; b kills the command (kill -9 of its parent:
# a crash) until the file "go" exists; b sleeps $SLEEPB seconds.
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def stage(name, extra=""):
    return {"name": name, "kind": "exec",
            "run": f"echo {name} >> {tmp}/ran; {extra}echo '{{\"{name}\":1}}'"}
stages = [stage("a"), stage("b", f"test -f {tmp}/go || kill -9 $PPID; sleep ${{SLEEPB:-0}}; "),
          stage("c")]
json.dump({"plan": "abc", "tenant": "acme", "config": {"stages": stages}}, open("p.json", "w"))
PY

# 1: kill in b; recover (a new task finishes it); retain by age; nothing may run again.
{ "$sc" run p.json --db r.db --task-id job --plain >out 2>&1; } 2>/dev/null
touch go
"$sc" recover p.json --db r.db --plain >out 2>&1
check "recover --db finishes the crashed task" '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "a,b,b,c," ]'
sleep 0.2
"$sc" retain --db r.db --max-age 50ms >out 2>&1
check "retain by age deletes the finished chain" '[ $? = 0 ]'
: >ran
"$sc" recover p.json --db r.db --dry-run >out 2>&1
"$sc" recover p.json --db r.db --plain >>out 2>&1
check "after retention nothing of the recovered task is offered or run again" \
  '[ ! -s ran ] && grep -q "nothing to recover" out'
"$sc" checkpoints --db r.db job >out 2>&1
check "the superseded task's checkpoints went with the chain" '! grep -q "^job/" out'

# 1: a long task that finished recently keeps every record; an old one loses all of them.
rm -f go; touch go; : >ran
SLEEPB=1 "$sc" run p.json --db pd.db --task-id pd --plain >out 2>&1
"$sc" retain --db pd.db --max-age 500ms >out 2>&1
"$sc" events --db pd.db --task pd --json >ev 2>>out
"$sc" checkpoints --db pd.db pd >cps 2>>out
check "a task that ended within the age keeps all its events and checkpoints" \
  '[ "$(wc -l <ev)" = 9 ] && [ "$(wc -l <cps)" = 3 ]'
: >ran
"$sc" recover p.json --db pd.db --from-checkpoint "$(head -1 cps | awk "{ print \$1 }")" --plain >out 2>&1
check "its first checkpoint still restores" '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "b,c," ]'
sleep 0.6
"$sc" retain --db pd.db --max-age 500ms >out 2>&1
"$sc" events --db pd.db --task pd --json >ev 2>>out
"$sc" checkpoints --db pd.db pd >cps 2>&1
check "a task that ended before the age loses all its events and checkpoints" \
  '[ ! -s ev ] && ! grep -q "^pd/" cps'

# 3: two logs of two runs under one task id: the second import is refused, in either order.
touch go
"$sc" run p.json --log la.jsonl --task-id job --plain >out 2>&1
rm -f go
{ "$sc" run p.json --log lb.jsonl --task-id job --plain >out 2>&1; } 2>/dev/null
"$sc" import la.jsonl --db ab.db >out 2>&1 && "$sc" import la.jsonl --db ab.db >out 2>&1
check "a log imported twice adds nothing the second time" '[ $? = 0 ] && grep -q "imported 0 events" out'
"$sc" import lb.jsonl --db ab.db >out 2>&1
check "a second run's log under the same id is refused" '[ $? = 2 ] && grep -q "from another run" out'
"$sc" import lb.jsonl --db ba.db >out 2>&1 && "$sc" import la.jsonl --db ba.db >out 2>&1
check "and so in the other order" '[ $? = 2 ] && grep -q "from another run" out'
touch go; : >ran
"$sc" recover p.json --db ba.db --plain >out 2>&1
check "the first log's crashed task is recovered, not spliced with the other" \
  '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "b,c," ]'

# 7, 8, 14: files that are no database, said as such, nothing written into them.
"$sc" run p.json --db /dev/stdout >tostdout.txt 2>out
check "--db on our own stdout is refused and nothing is written there" \
  '[ $? = 2 ] && [ ! -s tostdout.txt ] && grep -q "stdout" out'
mkfifo fifo
timeout 10 "$sc" checkpoints --db fifo job >out 2>&1
check "checkpoints --db FIFO is refused, not a hang" '[ $? = 2 ] && grep -q "a FIFO" out'
timeout 10 "$sc" events --db fifo >out 2>&1
check "events --db FIFO is refused, not a hang" '[ $? = 2 ] && grep -q "a FIFO" out'
mkdir adir
"$sc" checkpoints --db adir job >out 2>&1
check "a directory is said to be one" '[ $? = 2 ] && grep -q "a directory" out'
ln -s nowhere dangling
"$sc" run p.json --db dangling >out 2>&1
check "a dangling symlink is said to be one" '[ $? = 2 ] && grep -q "symbolic link to nothing" out'

# 10: crash, a recovery that crashes too, then a restore from the first task's checkpoint: the
# restored task supersedes the unfinished recovery, so nothing is offered afterwards.
rm -f go; : >ran
{ "$sc" run p.json --db h.db --task-id h1 --plain >out 2>&1; } 2>/dev/null
{ "$sc" recover p.json --db h.db --plain >out 2>&1; } 2>/dev/null
cp1=$("$sc" checkpoints --db h.db h1 | head -1 | awk "{ print \$1 }")
touch go; : >ran
"$sc" recover p.json --db h.db --from-checkpoint "$cp1" --plain >out 2>&1
check "restore from $cp1 beside a crashed recovery completes" '[ $? = 0 ] && [ "$(tr "\n" , <ran)" = "b,c," ]'
: >ran
"$sc" recover p.json --db h.db --dry-run >out 2>&1
"$sc" recover p.json --db h.db --plain >>out 2>&1
check "the crashed recovery is superseded by the restored task" '[ ! -s ran ] && grep -q "nothing to recover" out'

# 12: the first commit of retain fails (EIO on its sync): nothing is counted as deleted, exit 5.
touch go
for t in r1 r2; do "$sc" run p.json --db ret.db --task-id $t --plain >out 2>&1; done
ASAN_OPTIONS=detect_leaks=0 strace -f -o /dev/null -e inject=fdatasync:error=EIO:when=1 \
  "$sc" retain --db ret.db --keep-last 1 >out 2>&1
check "retain whose commit fails counts nothing and exits 5" \
  '[ $? = 5 ] && grep -q "deleted 0 checkpoints" out && grep -q "I/O error" out'
"$sc" checkpoints --db ret.db r1 >cps 2>&1
check "and the checkpoints are all there" '[ "$(wc -l <cps)" = 3 ]'

# 13: import of what is no log says so.
timeout 10 "$sc" import /dev/zero --db imp.db >out 2>&1
check "import /dev/zero is refused with a message" '[ $? = 2 ] && grep -q "not a regular file" out'
timeout 10 "$sc" import fifo --db imp.db >out 2>&1
check "import FIFO is refused with a message, not a hang" '[ $? = 2 ] && grep -q "not a regular file" out'

# 11: the database cannot store even task.created (ENOSPC on one of its writes, the first one
# after which it holds no event): exit 5 says to run the command again, not to recover.
found=""
for w in $(seq 5 120); do
  rm -f full.db full.db-wal full.db-shm
  ASAN_OPTIONS=detect_leaks=0 strace -f -o /dev/null -e inject=pwrite64:error=ENOSPC:when=$w \
    "$sc" run p.json --db full.db --plain >/dev/null 2>full.err
  rc=$?
  if [ $rc = 5 ] && [ -z "$("$sc" events --db full.db --json 2>/dev/null)" ]; then found=$w; break; fi
done
cp full.err out 2>/dev/null
check "a database without even task.created says to run the same command again (write $found)" \
  '[ -n "$found" ] && grep -q "run the same command again" out && ! grep -q "recover --db. finishes" out'

# 14: the same file as log and database under two spellings, before it exists; an empty file.
"$sc" run p.json --db same --log ./same >out 2>&1
check "--db same --log ./same is refused as one file and nothing is left behind" \
  '[ $? = 2 ] && grep -q "the log.s file" out && [ ! -e same ]'
: >empty.db
"$sc" recover p.json --db empty.db --dry-run >out 2>&1
check "recover --dry-run on an empty database agrees with recover: nothing, exit 0" \
  '[ $? = 0 ] && grep -q "nothing to recover" out'
"$sc" checkpoints --db empty.db job >out 2>&1
check "a reader says an empty database is empty" '[ $? = 2 ] && grep -q "is empty" out'
echo "1..$n"
