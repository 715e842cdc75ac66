#!/usr/bin/env python3
"""Counts test cases from meson's testlog.json: each TAP line of a TAP test ("ok" / "not ok")
is a case; a test without TAP output counts as one case. Prints "N passed, N failed"."""
import json
import re
import sys

passed = failed = 0
failures = []
with open(sys.argv[1]) as log:
    for line in log:
        t = json.loads(line)
        cases = [l for l in (t.get("stdout") or "").splitlines()
                 if re.match(r"^(not )?ok\b", l)]
        ok_result = t.get("result") in ("OK", "EXPECTEDFAIL", "SKIP")
        if cases:
            for c in cases:
                if c.startswith("not ok") and "# TODO" not in c:
                    failed += 1
                    failures.append(f"{t['name']}: {c}")
                else:
                    passed += 1
            if not ok_result and not any(c.startswith("not ok") for c in cases):
                failed += 1  # a crash or a sanitizer report after the last case
                failures.append(f"{t['name']}: {t.get('result')}")
        elif ok_result:
            passed += 1
        else:
            failed += 1
            failures.append(f"{t['name']}: {t.get('result')}")
if len(sys.argv) > 2 and sys.argv[2] == "1":
    failed += 1
    failures.append("format: clang-format differences")
else:
    passed += 1
for f in failures:
    print("FAILED", f)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
