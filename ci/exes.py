#!/usr/bin/env python3
"""Reads `cargo ... --message-format=json` on stdin; prints `package<TAB>target<TAB>path` for each
executable of the wanted kind: `test` (unit and integration test harnesses) or `bench`."""
import json
import sys

want = sys.argv[1]
seen = set()
for line in sys.stdin:
    try:
        m = json.loads(line)
    except json.JSONDecodeError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kinds = m["target"]["kind"]
    if want == "bench" and "bench" not in kinds:
        continue
    if want == "test" and not m["profile"]["test"]:
        continue
    # package_id: "path+file:///.../crates/amx-kernels#0.1.0" or "registry+...#name@1.2.3"
    before, _, after = m["package_id"].partition("#")
    pkg = after.split("@")[0] if "@" in after else before.rstrip("/").split("/")[-1]
    key = (pkg, m["target"]["name"])
    if key in seen:
        continue
    seen.add(key)
    print(f"{pkg}\t{m['target']['name']}\t{m['executable']}")
