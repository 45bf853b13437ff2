"""A paused sandbox outlives a restart of `ironclaw serve --e2b`, through
the official E2B Python SDK. Run twice by orchestrator/tests/e2b_python.rs
(E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY set): with
E2B_RESTART_STEP=pause it makes a sandbox with a file and a counting
process, pauses it and prints `paused: <id> <count>`; after the restart,
with E2B_RESTART_STEP=connect and E2B_PAUSED=`<id> <count>`, it connects
(resumes) and finds both. Prints `e2b-test: PASS` at the end."""

import os
import sys
import time

from e2b import Sandbox, SandboxQuery, SandboxState
from checks import check, eventually

COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.tmp; "
    "mv /tmp/counter.tmp /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &"
)


def counter(sbx):
    return int(sbx.files.read("/tmp/counter").strip())


def pause():
    sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b-restart"})
    sbx.files.write("/tmp/kept.txt", "kept across a restart")
    sbx.commands.run(COUNTER)
    eventually(lambda: sbx.files.exists("/tmp/counter") and counter(sbx) >= 3, "the counter counts")
    before = counter(sbx)
    check(sbx.pause() is True, "pause")
    print(f"paused: {sbx.sandbox_id} {before}", flush=True)


def connect():
    sid, before = os.environ["E2B_PAUSED"].split()
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    check([s.sandbox_id for s in paused] == [sid], "after the restart Sandbox.list shows it paused")
    check(paused[0].metadata == {"suite": "e2b-restart"}, "with its metadata")
    sbx = Sandbox.connect(sid)
    check(sbx.get_info().state == SandboxState.RUNNING, "Sandbox.connect resumes it")
    check(sbx.files.read("/tmp/kept.txt") == "kept across a restart", "its file is there")
    after = counter(sbx)
    check(after >= int(before), f"the counter went on from where it was ({before} before, {after} now)")
    eventually(lambda: counter(sbx) >= after + 3, "and keeps counting")
    check(sbx.kill() is True, "kill")
    check(Sandbox.list().next_items() == [], "no sandbox left")


def main():
    step = os.environ["E2B_RESTART_STEP"]
    {"pause": pause, "connect": connect}[step]()
    print("e2b-test: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
