#!/usr/bin/env python3
"""faultcheck: the judge of the fault suites (faults.sh, writers.sh, recovery_crash.sh).

  faultcheck.py pipeline FILE DIR [STAGES]   write the reference job: STAGES (12) exec stages, each
                                             appending its name to DIR/ran (and its shell's pid to
                                             DIR/pids); s6 is irreversible, behind a gate that
                                             approves itself on timeout (so --no-prompt passes it)
  faultcheck.py growth FILE DIR STAGES       write the growth job: STAGES exec stages, each adding
                                             a 10 KiB member (its name) to the context; the last
                                             one fails unless the context holds every earlier one
  faultcheck.py snapshot LOG RAN             one line for a later check: the log's line count, the
                                             stages whose stage.completed it holds, the ran count
  faultcheck.py call LOG TRACE TYPE STAGE    the number of the counted call (in the shim's TRACE
                                             of the run that wrote LOG) that wrote the first event
                                             of TYPE (stage.completed, ...) for STAGE
  faultcheck.py line LOG TYPE STAGE          the line number of that event in LOG
  faultcheck.py biglog DONE TAIL OUT MB      write OUT: copies of the finished job in log DONE
                                             (each under its own task id) up to MB megabytes,
                                             then the lines of log TAIL, on one valid chain
  faultcheck.py judge LOG RAN INCIDENTS SNAPSHOT...
                                             check the invariants after a job and its recoveries;
                                             prints one line per violation, exits 1 if any

A snapshot is taken before each process that continues the job (a recovery, or a fresh run when
the log holds no task). The invariants, from DESIGN.md "Subscribers and the durability barrier":
  - every stage ran; a stage ran at most 1 + INCIDENTS times, and all stages together re-ran at
    most INCIDENTS times (one in-flight stage per incident);
  - a stage whose stage.completed was in the log when a process started did not run again;
  - when the log held no task, no stage had run (task.created is a barrier);
  - an irreversible stage that had run without its stage.completed on record was run again only
    after an approval.requested with reason irreversible-stage-in-flight and an approving decision;
  - the log ends with the job completed: a task.completed, and no task left without a terminal
    event that a later task does not supersede.
"""
import hashlib
import json
import sys

IRREVERSIBLE = "s6"
TERMINAL = {"stagecoach.task.completed", "stagecoach.task.cancelled", "stagecoach.rollback.completed"}


def pipeline(path, directory, count=12):
    stages = []
    for i in range(count):
        stage = {
            "name": "s%d" % i,
            "kind": "exec",
            "run": 'echo s%d >> "$DIR/ran"; echo $$ >> "$DIR/pids"' % i,
            "env": {"DIR": "${config.dir}"},
        }
        if stage["name"] == IRREVERSIBLE:
            stage["effect"] = "irreversible"
            stage["approval"] = {"required": True, "timeout_ms": 20, "on_timeout": "approve"}
        stages.append(stage)
    with open(path, "w") as f:
        json.dump({"plan": "ref", "tenant": "acme", "config": {"dir": directory, "stages": stages}}, f)
        f.write("\n")


PAD = 10 * 1024


def growth(path, directory, count):
    add = 'printf \'{"%s":"%s"}\' "$SC_STAGE" "$V" > "$SC_OUTPUT"; echo "$SC_STAGE" >> "$DIR/ran"'
    last = ('test "$(grep -o \'"s[0-9]*":"\' "$SC_CONTEXT_FILE" | sort -u | wc -l)" = %d && ' % (count - 1)) + add
    stages = [{"name": "s%d" % i, "kind": "exec", "run": last if i == count - 1 else add,
               "env": {"V": "${config.pad}", "DIR": "${config.dir}"}} for i in range(count)]
    with open(path, "w") as f:
        json.dump({"plan": "growth", "tenant": "acme",
                   "config": {"dir": directory, "pad": "x" * PAD, "stages": stages}}, f)
        f.write("\n")


def events(log):
    """The events of the log's whole lines (a torn tail is not an event)."""
    out = []
    try:
        with open(log, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return out
    for raw in data.split(b"\n")[:-1]:
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"type": "unparsable"})
    return out


def ran_lines(ran):
    try:
        with open(ran) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def completed_stages(evs):
    return sorted({e["data"]["stage"] for e in evs if e.get("type") == "stagecoach.stage.completed"})


def snapshot(log, ran):
    evs = events(log)
    return "%d:%d:%s" % (len(evs), len(ran_lines(ran)), ",".join(completed_stages(evs)))


def approving(e):
    t = e.get("type")
    return t == "stagecoach.approval.granted" or (
        t == "stagecoach.approval.timed_out" and e.get("data", {}).get("action") == "approve")


def judge(log, ran, incidents, snaps, count=12):
    why = []
    evs = events(log)
    runs = ran_lines(ran)
    names = ["s%d" % i for i in range(count)]
    for name in names:
        n = runs.count(name)
        if n < 1:
            why.append("%s never ran" % name)
        elif n > 1 + incidents:
            why.append("%s ran %d times after %d incident(s)" % (name, n, incidents))
    extra = sum(max(0, runs.count(name) - 1) for name in names)
    if extra > incidents:
        why.append("%d re-runs after %d incident(s): %s" % (extra, incidents, " ".join(runs)))
    for snap in snaps:
        lines, ran_before, done = snap.split(":", 2)
        lines, ran_before = int(lines), int(ran_before)
        done = set(done.split(",")) if done else set()
        later = runs[ran_before:]
        for name in sorted(done):
            if name in later:
                why.append("%s ran again although its stage.completed was logged" % name)
        if not any(e.get("type") == "stagecoach.task.created" for e in evs[:lines]) and ran_before:
            why.append("%d stage(s) ran but the log held no task.created" % ran_before)
        if IRREVERSIBLE in runs[:ran_before] and IRREVERSIBLE not in done and IRREVERSIBLE in later:
            asked = decided = False
            for e in evs[lines:]:
                d = e.get("data", {})
                if d.get("stage") != IRREVERSIBLE:
                    continue
                if e.get("type") == "stagecoach.approval.requested":
                    asked = asked or d.get("reason") == "irreversible-stage-in-flight"
                elif approving(e) and asked:
                    decided = True
                elif e.get("type") == "stagecoach.stage.started":
                    break
            if not (asked and decided):
                why.append("the in-flight irreversible %s ran again without an approval that names "
                           "it in flight (log lines after %d)" % (IRREVERSIBLE, lines))
    if any(e.get("type") == "unparsable" for e in evs):
        why.append("a whole line of the log is not JSON")
    if not any(e.get("type") == "stagecoach.task.completed" for e in evs):
        why.append("no task.completed in the log")
    finished, superseded, seen = set(), set(), []
    for e in evs:
        task = e.get("taskid")
        if task is None:
            continue
        if task not in seen:
            seen.append(task)
        if e.get("type") in TERMINAL:
            finished.add(task)
        source = e.get("data", {}).get("recovered_from")
        if source:
            superseded.add(source)
    open_tasks = [t for t in seen if t not in finished and t not in superseded]
    if open_tasks:
        why.append("unfinished in the log: %s" % " ".join(open_tasks))
    return why


def event_line(log, kind, stage):
    for number, e in enumerate(events(log), 1):
        if e.get("type") == "stagecoach." + kind and e.get("data", {}).get("stage") == stage:
            return number
    return 0


def event_call(log, trace, kind, stage):
    number = event_line(log, kind, stage)
    if number == 0:
        return 0
    with open(log, "rb") as f:
        offset = sum(len(line) for line in f.read().split(b"\n")[:number - 1]) + number - 1
    written = 0
    with open(trace) as f:
        for row in f:
            field = row.split()
            if len(field) == 3 and field[1] == "write":
                written += int(field[2])
                if written > offset:
                    return int(field[0])
    return 0


def bare(line):
    """The event of a log line: the line without its chain member (docs/jsonl.md)."""
    assert line[-76:-66] == b',"chain":"', "not a log line"
    return line[:-76] + b"}"


def biglog(done, tail, out, megabytes):
    with open(done, "rb") as f:
        done_lines = [bare(line) for line in f.read().split(b"\n")[:-1]]
    with open(tail, "rb") as f:
        tail_lines = [bare(line) for line in f.read().split(b"\n")[:-1]]
    task = json.loads(done_lines[0])["taskid"].encode()
    prev = b"0" * 64
    size, copy = 0, 0
    with open(out, "wb") as f:
        def put(body):
            nonlocal prev, size
            prev = hashlib.sha256(prev + body).hexdigest().encode()
            line = body[:-1] + b',"chain":"' + prev + b'"}\n'
            f.write(line)
            size += len(line)
        while size < megabytes * 1024 * 1024:
            copy += 1
            other = task[:-8] + b"%08x" % copy
            for body in done_lines:
                put(body.replace(task, other))
        for body in tail_lines:
            put(body)


def main(argv):
    if len(argv) >= 4 and argv[1] == "pipeline":
        pipeline(argv[2], argv[3], int(argv[4]) if len(argv) > 4 else 12)
        return 0
    if len(argv) == 5 and argv[1] == "growth":
        growth(argv[2], argv[3], int(argv[4]))
        return 0
    if len(argv) == 4 and argv[1] == "snapshot":
        print(snapshot(argv[2], argv[3]))
        return 0
    if len(argv) == 6 and argv[1] == "call":
        print(event_call(argv[2], argv[3], argv[4], argv[5]))
        return 0
    if len(argv) == 6 and argv[1] == "biglog":
        biglog(argv[2], argv[3], argv[4], int(argv[5]))
        return 0
    if len(argv) == 5 and argv[1] == "line":
        print(event_line(argv[2], argv[3], argv[4]))
        return 0
    if len(argv) >= 5 and argv[1] == "judge":
        why = judge(argv[2], argv[3], int(argv[4]), argv[5:])
        for w in dict.fromkeys(why):
            print(w)
        return 1 if why else 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
