#!/usr/bin/env python3
"""The socket adapter through the real `stagecoach` binary and real sockets, as TAP: 200 consumers
get the same bytes as the log; tokens and roles; replay from the ring, from the log and the gap
line; bad input; the limits; a slow consumer dropped without slowing the run; SIGINT during a
replay of a large log on a slow disk; --socket-limits finished=N; 1,000 connections with the
descriptor count back where it was; examples/consumer.py.

usage: socket.py STAGECOACH EXAMPLES_DIR"""
import json, os, selectors, shutil, signal, socket, subprocess, sys, tempfile, time

sc, examples = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp(prefix="sc-socket-")
os.environ["TMPDIR"] = tmp
procs = []
n = 0


def ok(cond, name, detail=""):
    global n
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, name))
    if not cond and detail:
        for l in str(detail)[:3000].splitlines():
            print("#   " + l)
    sys.stdout.flush()
    return cond


def path(name):
    return os.path.join(tmp, name)


def pipeline(name, stages, tenant="acme"):
    with open(path(name), "w") as f:
        json.dump({"plan": "p", "tenant": tenant, "config": {"stages": stages}}, f)
    return path(name)


def exec_stages(prefix, count, **extra):
    return [dict({"name": "%s%d" % (prefix, i), "kind": "exec", "run": "true"}, **extra) for i in range(count)]


GATE = {"name": "gate", "kind": "exec", "run": "true", "approval": {"required": True}}

tokens = path("tokens")
with open(tokens, "w") as f:
    f.write("# name:token:roles\nalice:tok-alice-0123456789:approver,viewer\n"
            "olga:tok-olga-0123456789:operator,viewer\nvic:tok-vic-0123456789:viewer\n"
            "root:tok-root-0123456789\n")
os.chmod(tokens, 0o600)
VIEW, OPER, APPR = "tok-vic-0123456789", "tok-olga-0123456789", "tok-alice-0123456789"


def start(args, sock):
    out = open(path("run-%d.out" % len(procs)), "w")
    p = subprocess.Popen([sc, "run"] + args + ["--no-prompt", "--plain"], stdout=out,
                         stderr=subprocess.STDOUT)
    procs.append(p)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            connect(sock).close()
            return p
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.05)
    raise SystemExit("Bail out! the server on %s did not come up (%s)" % (sock, open(out.name).read()))


def connect(addr, timeout=10):
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(addr[5:])
    else:
        host, port = addr[4:].rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    return s


class Client:
    def __init__(self, addr, timeout=10):
        self.s = connect(addr, timeout)
        self.buf = b""

    def send(self, obj):
        self.s.sendall((json.dumps(obj) + "\n").encode() if not isinstance(obj, bytes) else obj)

    def line(self):
        """The next line (bytes, no newline); None at EOF."""
        while b"\n" not in self.buf:
            try:
                got = self.s.recv(1 << 16)
            except (ConnectionResetError, socket.timeout):
                got = b""
            if not got:
                return None
            self.buf += got
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def lines(self, count):
        out = []
        while len(out) < count:
            l = self.line()
            if l is None:
                break
            out.append(l)
        return out

    def rest(self):
        out = []
        while True:
            l = self.line()
            if l is None:
                return out
            out.append(l)

    def ask(self, obj):
        self.send(obj)
        while True:
            l = self.line()
            if l is None:
                return None
            m = json.loads(l)
            if "ok" in m or "error" in m:
                return m

    def close(self):
        self.s.close()


def log_events(log, task=None):
    """The log's lines without their chain member: the bytes the stream must carry."""
    out = []
    for line in open(log, "rb"):
        body = line.rstrip(b"\n")[:-76] + b"}"
        if task is None or json.loads(body)["taskid"] == task:
            out.append(body)
    return out


def finish(p, timeout=60):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return -1


def status_of(addr, task):
    c = Client(addr)
    r = c.ask({"op": "status", "token": VIEW, "task": task})
    c.close()
    return r and r.get("task", {}).get("status")


def status_of_quiet(addr, task):
    """status_of, or None while nothing listens there yet (or the task is not known)."""
    try:
        return status_of(addr, task)
    except OSError:
        return None


try:
    # --- 200 consumers, tokens and roles, bad input (one run waiting at its gate) ---
    sock = "unix:" + path("a.sock")
    p = start([pipeline("a.json", exec_stages("s", 3) + [GATE] + exec_stages("t", 20)), "--log",
               path("a.jsonl"), "--socket", sock, "--token-file", tokens, "--task-id", "job-a",
               "--socket-limits", "clients=300,line=4096,pending=8"], sock)
    ok(oct(os.stat(path("a.sock")).st_mode & 0o777) == "0o600", "the unix socket file has mode 0600")
    consumers = []
    for i in range(200):
        c = Client(sock, timeout=60)
        c.send({"subscribe": {"task": "job-a", "from_seq": 1, "token": VIEW}})
        consumers.append(c)
    deadline = time.time() + 20
    while status_of(sock, "job-a") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.05)
    ok(status_of(sock, "job-a") == "AWAITING_APPROVAL", "the task waits at its gate for a socket client")

    c = Client(sock)
    r = c.ask({"op": "approve", "token": "not-a-token", "task": "job-a", "stage": "gate"})
    ok(r == {"ok": False, "error": "unauthorized", "message": "unknown token"}, "a wrong token is unauthorized", r)
    r = c.ask({"op": "approve", "task": "job-a", "stage": "gate"})
    ok(r and r["error"] == "unauthorized", "a missing token is unauthorized", r)
    r = c.ask({"op": "approve", "token": VIEW, "task": "job-a", "stage": "gate"})
    ok(r and r["error"] == "unauthorized" and "approver" in r["message"], "a viewer cannot approve", r)
    r = c.ask({"op": "approve", "token": OPER, "task": "job-a", "stage": "gate"})
    ok(r and r["error"] == "unauthorized", "an operator cannot approve", r)
    r = c.ask({"op": "pause", "token": VIEW, "task": "job-a"})
    ok(r and r["error"] == "unauthorized", "a viewer cannot pause", r)
    r = c.ask({"op": "pending", "token": "tok-vic-012345678"})
    ok(r and r["error"] == "unauthorized", "a token one character short is refused", r)
    r = c.ask({"op": "pending", "token": VIEW, "id": 7})
    ok(r and r["ok"] and r["id"] == 7 and [x["stage"] for x in r["pending"]] == ["gate"]
       and r["pending"][0]["approvals"] == 0, "pending lists the gate, unapproved, and echoes the id", r)
    r = c.ask({"op": "reject", "token": APPR, "task": "job-a", "stage": "nosuch"})
    ok(r and r["ok"] is False and r["error"].startswith("SC_E"), "an engine refusal names its error", r)

    # bad input, on connections of their own
    b = Client(sock)
    r = b.ask(b"{not json\n")
    ok(r and r["error"] == "SC_EPARSE", "invalid JSON gets SC_EPARSE", r)
    r = b.ask(b'{"op":"frobnicate","token":"x"}\n')
    ok(r and r["error"] == "SC_EINVAL" and "unknown op" in r["message"], "an unknown op gets SC_EINVAL", r)
    r = b.ask(bytes(range(256)).replace(b"\n", b"") + b"\n")
    ok(r and r["ok"] is False, "binary garbage gets an error reply", r)
    r = b.ask(b'[1,2,3]\n')
    ok(r and r["error"] == "SC_EPARSE", "a line that is not an object is refused", r)
    r = b.ask({"op": "status", "token": VIEW, "task": 5})
    ok(r and r["error"] == "SC_EINVAL", "a member of the wrong type is refused", r)
    b.close()
    b = Client(sock)
    b.send(b"x" * 5000)
    r = b.rest()
    ok(r and json.loads(r[-1])["error"] == "line-too-long", "a line over the limit is refused and the connection closed", r)
    b = Client(sock)
    b.send(b'{"op":"approve","token":"' + APPR.encode() + b'","task":"job-a","sta')
    b.close()  # half a line, then gone
    b = Client(sock)  # connects and sends nothing: with a token file, refused after the wait
    r = b.rest()
    ok(r and json.loads(r[0])["error"] == "unauthorized", "a silent client is told a token is needed and closed", r)
    b = Client(sock)  # a client that sends and never reads its replies
    try:
        for _ in range(50):
            b.send(b"".join(b'{"op":"status","token":"%s"}\n' % VIEW.encode() for _ in range(200)))
    except OSError:
        pass
    r = b.rest()
    ok(r and json.loads(r[-1]).get("error") == "too-many-pending", "a client that does not read its replies is cut off", r[-1:] if r else r)
    ok(status_of(sock, "job-a") == "AWAITING_APPROVAL", "bad input and refused tokens changed nothing")

    def wait_status(want):
        deadline = time.time() + 20
        while status_of(sock, "job-a") != want and time.time() < deadline:
            time.sleep(0.05)
        return status_of(sock, "job-a") == want

    r = c.ask({"op": "pause", "token": OPER, "task": "job-a"})
    ok(r and r["ok"] and wait_status("PAUSED"), "an operator pauses the waiting task", r)
    r = c.ask({"op": "approve", "token": APPR, "task": "job-a", "stage": "gate"})
    ok(r and r["error"] == "SC_ETRANSITION", "a paused task cannot be approved: the engine's error", r)
    r = c.ask({"op": "resume", "token": OPER, "task": "job-a"})
    ok(r and r["ok"] and wait_status("AWAITING_APPROVAL"), "... and resumes it, back at its gate", r)
    r = c.ask({"op": "retry", "token": OPER, "task": "job-a"})
    ok(r and r["error"] == "SC_ETRANSITION" and "FAILED" in r["message"], "retry of a task that did not fail is refused", r)

    # the commands
    def cmd(args, token=None, **kw):
        env = dict(os.environ)
        env.pop("STAGECOACH_TOKEN", None)
        if token:
            env["STAGECOACH_TOKEN"] = token
        return subprocess.run([sc] + args, capture_output=True, text=True, env=env, timeout=30, **kw)

    r = cmd(["pending", sock], VIEW)
    ok(r.returncode == 0 and "job-a" in r.stdout and "gate" in r.stdout and "0/1" in r.stdout,
       "stagecoach pending lists the gate", r.stdout + r.stderr)
    r = cmd(["pending", sock, "--json"], VIEW)
    ok(r.returncode == 0 and json.loads(r.stdout)[0]["stage"] == "gate", "stagecoach pending --json", r.stdout)
    r = cmd(["pending", sock])
    ok(r.returncode == 6 and "unauthorized" in r.stderr, "stagecoach pending without a token exits 6", r.stderr)
    r = cmd(["approve", sock, "job-a", "gate"], VIEW)
    ok(r.returncode == 6 and "approver" in r.stderr, "stagecoach approve with a viewer token exits 6", r.stderr)
    r = cmd(["approve", sock, "job-a", "gate"])
    ok(r.returncode == 2 and "STAGECOACH_TOKEN" in r.stderr, "stagecoach approve without a token exits 2", r.stderr)
    r = cmd(["reject", sock, "job-a", "nosuch"], APPR)
    ok(r.returncode == 1 and "SC_E" in r.stderr, "stagecoach reject of a stage that does not wait exits 1", r.stderr)
    r = cmd(["approve", "unix:" + path("nothing.sock"), "job-a", "gate"], APPR)
    ok(r.returncode == 2 and "cannot connect" in r.stderr, "no server: exit 2", r.stderr)
    r = cmd(["tail", sock, "--from-seq", "3"], VIEW)
    ok(r.returncode == 2, "tail --from-seq without --task is a usage error", r.stderr)
    r = cmd(["tail", sock], OPER.replace("olga", "nobody"))
    ok(r.returncode == 6, "tail with a wrong token exits 6", r.stderr)
    env = dict(os.environ, STAGECOACH_TOKEN=VIEW)
    tails = [subprocess.Popen([sc, "tail", sock, "--task", "job-a", "--from-seq", "1"] + extra,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for extra in ([], ["--json"])]
    r = c.ask({"op": "status", "token": VIEW})
    ok(r and r["ok"] and [t["task"] for t in r["tasks"]] == ["job-a"] and r["tasks"][0]["held"],
       "status without a task lists every task the server saw", r)
    typed = Client(sock, timeout=60)
    typed.send({"subscribe": {"token": VIEW, "types": ["approval.*", "task.completed"]}})
    other = Client(sock, timeout=60)
    other.send({"subscribe": {"token": VIEW, "tenant": "other"}})
    time.sleep(0.3)

    r = c.ask({"op": "approve", "token": APPR, "task": "job-a", "stage": "gate", "comment": "lgtm",
               "reviewer": "mallory"})
    ok(r and r["ok"] and r["reviewer"] == "alice", "an approver approves, as the token's name", r)
    c.close()
    rc = finish(p)
    ok(rc == 0, "the run completes after the approval over the socket", open(path("run-0.out")).read())
    want = log_events(path("a.jsonl"))
    granted = [json.loads(l) for l in want if b"approval.granted" in l]
    ok(len(granted) == 1 and granted[0]["data"]["reviewer"] == "alice" and granted[0]["data"]["comment"] == "lgtm",
       "the log records one approval, by alice", granted)
    sel = selectors.DefaultSelector()
    got = {}
    for c in consumers:
        c.s.setblocking(False)
        sel.register(c.s, selectors.EVENT_READ, c)
        got[c] = b""
    deadline = time.time() + 60
    while sel.get_map() and time.time() < deadline:
        for key, _ in sel.select(1):
            try:
                chunk = key.data.s.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                got[key.data] += chunk
            else:
                sel.unregister(key.data.s)
    seqs = set(got[c] for c in consumers)
    first = next(iter(seqs)).split(b"\n")[:-1]
    ok(len(seqs) == 1, "200 consumers received the same sequence", "%d different" % len(seqs))
    ok(first == want, "the stream is the log's lines without the chain, byte for byte",
       "stream %d lines, log %d" % (len(first), len(want)))
    ok([json.loads(l)["seq"] for l in first] == list(range(1, len(want) + 1)), "in order, from seq 1, without a gap")
    ok(not os.path.exists(path("a.sock")), "the socket file is removed at exit")
    for c in consumers:
        c.close()
    typed_got = [json.loads(l)["type"] for l in typed.rest()]
    ok(typed_got == ["stagecoach.approval.granted", "stagecoach.task.completed"],
       "a types filter gets only those types, from its connection on", typed_got)
    ok(other.rest() == [], "a tenant filter of another tenant gets nothing")
    outs = [t.communicate(timeout=30) for t in tails]
    events = subprocess.run([sc, "events", path("a.jsonl"), "--task", "job-a"], capture_output=True, text=True).stdout
    ok(tails[0].returncode == 0 and outs[0][0].decode() == events,
       "stagecoach tail prints what stagecoach events prints of the log, and exits 0 at the end",
       (tails[0].returncode, outs[0][0].decode()[:500], outs[0][1].decode()[:500]))
    ok(tails[1].returncode == 0 and outs[1][0].split(b"\n")[:-1] == want, "stagecoach tail --json prints the raw lines")

    # --- replay: the log, the ring, the seam, the gap ---
    rc = subprocess.run([sc, "run", pipeline("old.json", exec_stages("o", 2)), "--log", path("r.jsonl"),
                         "--task-id", "old", "--plain"], stdout=subprocess.DEVNULL).returncode
    ok(rc == 0, "a first run leaves a finished task in the log")
    sock = "unix:" + path("r.sock")
    with open(path("r.sock"), "w"):
        pass  # a plain file where the socket goes: refused, left alone
    r = subprocess.run([sc, "run", path("old.json"), "--socket", sock], capture_output=True, text=True)
    ok(r.returncode == 2 and "not a socket" in r.stderr and os.path.exists(path("r.sock")),
       "a file that is not a socket is not replaced", r.stderr)
    os.unlink(path("r.sock"))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path("r.sock"))
    stale.close()  # a socket file nobody listens on, as a crash leaves it
    p = start([pipeline("r.json", exec_stages("s", 10) + [GATE, {"name": "z", "kind": "exec", "run": "true"}]),
               "--log", path("r.jsonl"), "--socket", sock, "--token-file", tokens, "--task-id", "new",
               "--socket-limits", "ring=8"], sock)
    ok(True, "a stale socket file is replaced")
    r = subprocess.run([sc, "run", path("old.json"), "--socket", sock], capture_output=True, text=True)
    ok(r.returncode == 2 and "listens" in r.stderr, "a socket something listens on is refused", r.stderr)
    deadline = time.time() + 20
    while status_of(sock, "new") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.05)
    # consumer.py, first part: it reads up to the gate, then stops
    state = path("consumer.state")
    env = dict(os.environ, STAGECOACH_TOKEN=VIEW)
    first_run = subprocess.Popen([sys.executable, os.path.join(examples, "consumer.py"), sock, "new", state],
                                 stdout=subprocess.PIPE, env=env, text=True)
    c = Client(sock)
    last_seq = c.ask({"op": "status", "token": VIEW, "task": "new"})["task"]["seq"]
    c.close()
    deadline = time.time() + 20  # until it has printed everything so far and noted it
    while time.time() < deadline:
        try:
            if int(open(state).read() or 0) == last_seq:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    first_run.send_signal(signal.SIGTERM)
    printed1 = first_run.communicate(timeout=10)[0].split("\n")[:-1]
    old = Client(sock)
    old.send({"subscribe": {"task": "old", "from_seq": 1, "token": VIEW}})
    want_old = log_events(path("r.jsonl"), "old")
    ok(old.lines(len(want_old)) == want_old, "replay of a task from the log, byte for byte")
    ring = Client(sock)
    ring.send({"subscribe": {"task": "new", "from_seq": 20, "token": VIEW}})
    seam = Client(sock)
    seam.send({"subscribe": {"task": "new", "from_seq": 1, "token": VIEW}})
    second_run = subprocess.Popen([sys.executable, os.path.join(examples, "consumer.py"), sock, "new", state],
                                  stdout=subprocess.PIPE, env=env, text=True)
    time.sleep(0.5)
    before = len(log_events(path("r.jsonl"), "new"))
    got_ring = ring.lines(before - 19)
    ok(got_ring == log_events(path("r.jsonl"), "new")[19:], "replay from the ring (seq 20 on)",
       "%d lines, want %d" % (len(got_ring), before - 19))
    a = Client(sock)
    r = a.ask({"op": "approve", "token": APPR, "task": "new", "stage": "gate"})
    a.close()
    ok(r and r["ok"], "approved", r)
    rc = finish(p)
    ok(rc == 0, "the replayed run completes")
    all_new = log_events(path("r.jsonl"), "new")
    got_seam = [l for l in seam.rest() if not l.startswith(b'{"error"')]
    ok(got_seam == all_new, "replay from the log, then the ring, then live: no gap, no duplicate",
       "got %d lines, want %d" % (len(got_seam), len(all_new)))
    printed2 = second_run.communicate(timeout=20)[0].split("\n")[:-1]
    seqs = [int(l.split()[0]) for l in printed1 + printed2]
    ok(seqs == list(range(1, len(all_new) + 1)) and len(printed1) > 0,
       "examples/consumer.py resumes from its state file: every event once", (printed1, printed2))
    for x in (old, ring, seam):
        x.close()

    # --- the gap line, the client limit, 1,000 connections (tcp, no log, a small ring) ---
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sock = "tcp:127.0.0.1:%d" % port
    p = start([pipeline("g.json", exec_stages("s", 10) + [GATE]), "--socket", sock, "--token-file", tokens,
               "--task-id", "gap", "--socket-limits", "ring=4,clients=20"], sock)
    deadline = time.time() + 20
    while status_of(sock, "gap") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.05)
    g = Client(sock)
    g.send({"subscribe": {"task": "gap", "from_seq": 1, "token": VIEW}})
    lines = g.lines(5)
    first = json.loads(lines[0]) if lines else {}
    ok(first.get("error") == "replay-gap" and first.get("from_seq") == 1 and first.get("first_available") == 20
       and [json.loads(l)["seq"] for l in lines[1:]] == [20, 21, 22, 23],
       "what neither the ring nor a log holds is said in one replay-gap line", lines)
    g.close()
    g = Client(sock)
    g.send({"subscribe": {"task": "never", "from_seq": 1, "token": VIEW}})
    ok(json.loads(g.line()) == {"error": "replay-gap", "task": "never", "from_seq": 1, "first_available": None},
       "an unknown task's replay is a gap too")
    g.close()
    fds = lambda: len(os.listdir("/proc/%d/fd" % p.pid))
    time.sleep(0.5)  # the connections above are gone on the server's side too
    fd0 = fds()
    for i in range(1000):
        x = connect(sock)
        if i % 2:
            x.sendall(b'{"subscribe":{"token":"%s"}}\n' % VIEW.encode())
        x.close()
    deadline = time.time() + 10
    while fds() != fd0 and time.time() < deadline:
        time.sleep(0.05)
    ok(fds() == fd0, "1,000 connections opened and closed: the descriptor count is back", "%d, was %d" % (fds(), fd0))
    time.sleep(0.3)
    held = [Client(sock) for _ in range(20)]
    for h in held:  # subscribed: they stay (a silent one would be closed after the wait)
        h.send({"subscribe": {"token": VIEW, "task": "gap"}})
    time.sleep(0.2)
    extra = Client(sock)
    said = extra.line()
    ok(json.loads(said or b"{}").get("error") == "too-many-clients", "a client over the limit is told and closed",
       (said, fds(), fd0))
    for x in held + [extra]:
        x.close()
    deadline = time.time() + 10
    while fds() != fd0 and time.time() < deadline:  # their slots are free again
        time.sleep(0.05)
    a = Client(sock)
    r = a.ask({"op": "cancel", "token": OPER, "task": "gap"})
    a.close()
    ok(r and r.get("ok"), "an operator cancels", r)
    ok(finish(p) == 3, "the run ends cancelled (exit 3)")

    # --- a slow consumer is dropped; the fast one and the run do not wait for it ---
    big = [{"name": "b%d" % i, "kind": "exec",
            "run": "printf '{\"blob\":\"%s\"}' \"$(head -c 100000 /dev/zero | tr '\\000' x)\" > \"$SC_OUTPUT\""}
           for i in range(60)]
    pipeline("big.json", big)

    def timed_run(slow):
        sock = "unix:" + path("big.sock")
        log = path("big-%d.jsonl" % slow)
        gate = pipeline("bigg.json", [dict(GATE, name="start")] + big)
        p = start([gate, "--log", log, "--socket", sock, "--token-file", tokens, "--task-id", "big",
                   "--socket-limits", "queue=1048576"], sock)
        fast = Client(sock, timeout=60)
        fast.send({"subscribe": {"token": VIEW, "task": "big", "from_seq": 1, "types": ["stage.*", "task.*"]}})
        lazy = None
        if slow:
            lazy = socket.socket(socket.AF_UNIX)
            lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lazy.connect(path("big.sock"))
            lazy.sendall(b'{"subscribe":{"token":"%s"}}\n' % VIEW.encode())
        time.sleep(0.3)
        a = Client(sock)
        a.ask({"op": "approve", "token": APPR, "task": "big", "stage": "start"})
        a.close()
        got = fast.rest()
        lazy_lines = []
        if lazy:
            lazy.settimeout(10)
            buf = b""
            while True:
                try:
                    chunk = lazy.recv(1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
            lazy_lines = buf.split(b"\n")[:-1]
            lazy.close()
        finish(p)
        ev = [json.loads(l) for l in log_events(log)]
        t = {e["type"]: e["time"] for e in ev}
        from datetime import datetime
        dur = (datetime.fromisoformat(t["stagecoach.task.completed"][:-1]) -
               datetime.fromisoformat(t["stagecoach.approval.granted"][:-1])).total_seconds()
        want = [l for l in log_events(log) if json.loads(l)["type"].split(".", 1)[1].split(".")[0] in ("stage", "task")]
        return dur, got == want, lazy_lines, len(ev)

    d0, fast_ok0, _, _ = timed_run(False)
    d1, fast_ok1, lazy_lines, total = timed_run(True)
    ok(fast_ok0 and fast_ok1, "the fast consumer gets every event it asked for, with or without a slow one")
    ok(lazy_lines and lazy_lines[-1] == b'{"error":"slow-consumer"}' and len(lazy_lines) - 1 < total,
       "the consumer that does not read is dropped with a slow-consumer line",
       lazy_lines[-1:] if lazy_lines else "nothing")
    ok(d1 <= d0 * 1.5 + 0.5, "the run takes no longer with the slow consumer (%.2fs, %.2fs without)" % (d1, d0))
    print("# run duration %.3fs alone, %.3fs with a slow consumer" % (d0, d1))

    # --- SIGINT to run while a replay reads a large log: the run does not wait for the replay ---
    # Each read of the log is slowed down (strace delays every pread, a slow disk): a replay of a
    # task the log does not hold would take ~0.3 s a MiB to read through.
    biglog = path("big-1.jsonl")
    sock = "unix:" + path("int.sock")
    out = open(path("int.out"), "w")
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=pread64", "-e",
                          "inject=pread64:delay_exit=300ms", sc, "run", path("bigg.json"), "--log",
                          biglog, "--socket", sock, "--token-file", tokens, "--task-id", "int",
                          "--no-prompt", "--plain"], stdout=out, stderr=subprocess.STDOUT, env=env)
    procs.append(p)
    deadline = time.time() + 60
    while status_of_quiet(sock, "int") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.1)
    rep = Client(sock, timeout=60)
    rep.send({"subscribe": {"token": VIEW, "task": "nosuch", "from_seq": 1}})
    time.sleep(0.8)  # its read is under way: a piece or two of the log
    kid = int(open("/proc/%d/task/%d/children" % (p.pid, p.pid)).read().split()[0])
    os.kill(kid, signal.SIGINT)
    t0 = time.time()
    rc = finish(p)
    took = time.time() - t0
    said = rep.rest()
    rep.close()
    print("# SIGINT with a replay of a %d-byte log in progress: exit %d after %.2f s" % (os.path.getsize(biglog), rc, took))
    ok(rc == 3 and took < 2, "SIGINT to run during a replay of a large log: exit 3 (cancelled) in under 2 s",
       (rc, took, open(path("int.out")).read()[-2000:]))
    ok(said == [], "... the replay was still reading when it stopped (no gap line came)", said)

    # --- a replaying client that reads slowly but steadily is not taken for one that stalls ---
    # 50 KB/s in 1 KiB reads for 6 s with stall=1000: what its socket holds shows its reads (it
    # would not if only what the server writes counted: that moves a socket buffer at a time).
    sock = "unix:" + path("steady.sock")
    p = start([path("bigg.json"), "--log", biglog, "--socket", sock, "--token-file", tokens, "--task-id",
               "steady", "--socket-limits", "stall=1000,ring=16"], sock)
    deadline = time.time() + 60
    while status_of_quiet(sock, "steady") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.1)
    rd = socket.socket(socket.AF_UNIX)
    rd.connect(path("steady.sock"))
    rd.sendall(b'{"subscribe":{"token":"%s","task":"big","from_seq":1}}\n' % VIEW.encode())
    rd.settimeout(5)
    got, t0, closed = b"", time.time(), False
    while time.time() - t0 < 6:
        try:
            chunk = rd.recv(1024)
        except OSError:
            chunk = b""
        if not chunk:
            closed = True
            break
        got += chunk
        time.sleep(0.02)
    rd.close()
    p.send_signal(signal.SIGINT)
    finish(p)
    print("# a steady 50 KB/s replay reader took %d bytes in 6 s" % len(got))
    ok(not closed and b"slow-consumer" not in got and len(got) > 200000,
       "a replaying client that reads 50 KB/s is not dropped by stall=1000", (closed, len(got), got[-200:]))

    # --- --socket-limits finished=N: the records of finished tasks the server keeps ---
    fin = pipeline("fin.json", exec_stages("s", 1) + [GATE])
    for i in range(3):  # each waits at its gate, nobody can approve: exit 1, unfinished in the log
        subprocess.run([sc, "run", fin, "--log", path("fin.jsonl"), "--task-id", "f%d" % i, "--no-prompt",
                        "--plain"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = "unix:" + path("fin.sock")
    out = open(path("fin.out"), "w")
    p = subprocess.Popen([sc, "recover", fin, "--log", path("fin.jsonl"), "--socket", sock, "--token-file",
                          tokens, "--socket-limits", "finished=1", "--no-prompt", "--plain"], stdout=out,
                         stderr=subprocess.STDOUT)
    procs.append(p)

    def next_pending():  # one at a time: the tasks share a tenant, one runs while the others queue
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                a = Client(sock)
                pend = a.ask({"op": "pending", "token": VIEW})["pending"]
                a.close()
                waiting = [x["task"] for x in pend if x["task"] not in ids]
                if waiting:
                    return waiting[0]
            except (OSError, TypeError):
                pass
            time.sleep(0.05)
        return None

    ids = []
    for k in range(3):
        t = next_pending()
        if t is None:
            break
        if k == 2:  # two have finished: the server remembers the last one only
            a = Client(sock)
            r0 = a.ask({"op": "status", "token": VIEW, "task": ids[0]})
            r1 = a.ask({"op": "status", "token": VIEW, "task": ids[1]})
            a.close()
            ok(r0 and r0.get("error") == "SC_ENOTFOUND" and "the last 1 finished" in r0.get("message", ""),
               "recover --socket-limits finished=1: the task that finished first is forgotten", r0)
            ok(r1 and r1.get("ok") and r1["task"]["status"] == "COMPLETED", "... the last one is remembered", r1)
        ids.append(t)
        a = Client(sock)
        a.ask({"op": "approve", "token": APPR, "task": t, "stage": "gate"})
        a.close()
        deadline = time.time() + 20
        while k < 2 and status_of_quiet(sock, t) != "COMPLETED" and time.time() < deadline:
            time.sleep(0.05)
    ok(len(ids) == 3, "... the three recovered tasks each waited at their gate in turn", ids)
    ok(finish(p) == 0, "... and the recover completes", open(path("fin.out")).read())
    for bad in ("finished=0", "finished=x", "stall=0", "finished=", "finishe=3", "queue=-1", "clients=-1",
                "ring=-1", "ring=18446744073709551615", "ring=16777217", "ring= 5", "ring=+5", "ring=5,",
                "pending=1000001"):
        r = subprocess.run([sc, "run", path("old.json"), "--socket", "unix:" + path("bad.sock"), "--socket-limits",
                            bad], capture_output=True, text=True)
        ok(r.returncode == 2 and "finished=N" in r.stderr and not os.path.exists(path("bad.sock")),
           "--socket-limits %s is a usage error (exit 2)" % bad, (r.returncode, r.stderr))

    # --- recover --socket: a run killed at its gate is recovered and approved over the socket ---
    sock = "unix:" + path("k.sock")
    p = start([pipeline("k.json", exec_stages("s", 2) + [GATE] + exec_stages("t", 2)), "--log", path("k.jsonl"),
               "--socket", sock, "--token-file", tokens, "--task-id", "killed"], sock)
    deadline = time.time() + 20
    while status_of(sock, "killed") != "AWAITING_APPROVAL" and time.time() < deadline:
        time.sleep(0.05)
    p.kill()
    p.wait()
    os.unlink(path("k.sock"))  # what the kill left (a stale file would be replaced as well)
    out = open(path("recover.out"), "w")
    p = subprocess.Popen([sc, "recover", path("k.json"), "--log", path("k.jsonl"), "--socket", sock,
                          "--token-file", tokens, "--no-prompt", "--plain"], stdout=out, stderr=subprocess.STDOUT)
    procs.append(p)
    pend = []
    deadline = time.time() + 20
    while not pend and time.time() < deadline:
        try:
            a = Client(sock)
            pend = a.ask({"op": "pending", "token": VIEW})["pending"]
            a.close()
        except OSError:
            pass
        time.sleep(0.05)
    ok(len(pend) == 1 and pend[0]["stage"] == "gate" and pend[0]["task"] != "killed",
       "recover --socket: the recovered task waits at the gate for a socket client", pend)
    a = Client(sock)
    r = a.ask({"op": "approve", "token": APPR, "task": pend[0]["task"] if pend else "?", "stage": "gate"})
    a.close()
    ok(r and r["ok"] and finish(p) == 0, "... and completes once approved over the socket", open(path("recover.out")).read())

    # --- a token file others can read is refused at start ---
    loose = path("loose")
    shutil.copy(tokens, loose)
    os.chmod(loose, 0o644)
    r = subprocess.run([sc, "run", path("old.json"), "--socket", "unix:" + path("l.sock"), "--token-file", loose],
                       capture_output=True, text=True)
    ok(r.returncode == 2 and "chmod 600" in r.stderr and not os.path.exists(path("l.sock")),
       "a token file readable by others is refused at start, with a message", r.stderr)
    r = subprocess.run([sc, "run", path("old.json"), "--socket", "tcp:0.0.0.0:0"], capture_output=True, text=True)
    ok(r.returncode == 2 and "loopback" in r.stderr, "a non-loopback address is refused", r.stderr)
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
print("1..%d" % n)
