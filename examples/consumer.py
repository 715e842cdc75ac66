#!/usr/bin/env python3
"""Follow one task's events from a stagecoach socket and resume where it left off.

usage: consumer.py unix:/path/to/socket|tcp:127.0.0.1:PORT TASK_ID STATE_FILE
The last sequence number seen is kept in STATE_FILE, so a restarted consumer asks the server to
replay from the next one: nothing is missed, nothing is printed twice. STAGECOACH_TOKEN is sent
when set (a server with a token file needs a viewer token)."""
import json, os, socket, sys

addr, task, state = sys.argv[1], sys.argv[2], sys.argv[3]
last = int(open(state).read() or 0) if os.path.exists(state) else 0
if addr.startswith("unix:"):
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(addr[5:])
else:
    host, port = addr[4:].rsplit(":", 1)
    conn = socket.create_connection((host.strip("[]"), int(port)))
sub = {"task": task, "from_seq": last + 1}
if os.environ.get("STAGECOACH_TOKEN"):
    sub["token"] = os.environ["STAGECOACH_TOKEN"]
conn.sendall((json.dumps({"subscribe": sub}) + "\n").encode())
for line in conn.makefile("rb"):
    msg = json.loads(line)
    if "error" in msg:  # replay-gap, slow-consumer, unauthorized: said, never hidden
        print("server:", msg, file=sys.stderr)
        continue
    print(msg["seq"], msg["type"], msg["data"].get("stage", ""), msg["data"]["status"], flush=True)
    with open(state + ".tmp", "w") as f:
        f.write(str(msg["seq"]))
    os.replace(state + ".tmp", state)  # the file always holds a whole number
