"""Pause, resume (connect) and kill of a paused sandbox through the official
E2B Python SDK (sync and async), unchanged, against `ironclaw serve --e2b`.
Run by orchestrator/tests/e2b_python.rs with E2B_API_URL, E2B_SANDBOX_URL
and E2B_API_KEY set; fails on the first wrong answer and prints
`e2b-test: PASS` at the end."""

import asyncio
import sys
import time

from e2b import (
    AsyncSandbox,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)
from checks import check, eventually, raises

# A process that outlives the command that started it: it counts on while
# the sandbox runs, and its count lives in its memory only.
COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.tmp; "
    "mv /tmp/counter.tmp /tmp/counter; sleep 0.2; done' >/dev/null 2>&1 &"
)
# Counts the processes whose command line starts with "sleep 600".
SLEEPERS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 600' || true"


def counter(sbx):
    return int(sbx.files.read("/tmp/counter").strip())


def ids(state=None):
    query = SandboxQuery(state=state) if state else None
    return [s.sandbox_id for s in Sandbox.list(query=query).next_items()]


def sync_pause_and_connect():
    sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b-pause"})
    sid = sbx.sandbox_id
    sbx.files.write("/tmp/kept.txt", "kept across pause")
    sbx.commands.run(COUNTER)
    eventually(lambda: sbx.files.exists("/tmp/counter") and counter(sbx) >= 3, "the counter counts")
    # A command of the SDK's session (background=True) is the service's:
    # the pause ends it (processes that outlived their command stay).
    sbx.commands.run("sleep 600", background=True)
    eventually(lambda: sbx.commands.run(SLEEPERS).stdout.strip() == "1", "a background=True command runs")

    e = raises(SandboxException, lambda: sbx.pause(mode="filesystem"), "a files-only pause is refused")
    check("not supported" in str(e), "the refusal says why")
    check(sbx.is_running(), "after the refusal it still runs")

    before = counter(sbx)
    t0 = time.monotonic()
    check(sbx.pause() is True, f"pause ({time.monotonic() - t0:.2f}s)")
    check(Sandbox.pause(sid) is False, "pause of a paused sandbox: already paused (409)")
    raises(NotFoundException, lambda: Sandbox.pause("sbx-nosuchsandbox"), "pause of an unknown sandbox: not found")
    info = Sandbox.get_info(sid)
    check(info.state == SandboxState.PAUSED, f"get_info: state {info.state}")
    check(info.metadata == {"suite": "e2b-pause"}, "get_info of a paused sandbox: its metadata")
    check(sid in ids([SandboxState.PAUSED]), "Sandbox.list(state=[paused]) shows it")
    check(sid not in ids([SandboxState.RUNNING]), "Sandbox.list(state=[running]) does not")
    check(sid in ids(), "Sandbox.list() (running and paused) shows it")
    check(not sbx.is_running(), "is_running() is False while paused")
    e = raises(SandboxException, lambda: Sandbox.connect(sid, on_resume="reboot"), "resume without memory is refused")
    check(Sandbox.get_info(sid).state == SandboxState.PAUSED, "after the refusal it is still paused")

    t0 = time.monotonic()
    again = Sandbox.connect(sid)
    check(again.sandbox_id == sid, f"Sandbox.connect resumes it under its id ({time.monotonic() - t0:.2f}s)")
    check(Sandbox.get_info(sid).state == SandboxState.RUNNING, "get_info: running again")
    check(again.files.read("/tmp/kept.txt") == "kept across pause", "its file is there")
    after = counter(again)
    check(after >= before, f"the counter went on from where it was ({before} before the pause, {after} now)")
    eventually(lambda: counter(again) >= after + 3, "the counter kept counting after the resume")
    check(sbx.commands.run("cat /tmp/kept.txt").stdout == "kept across pause", "the old handle works: same envdAccessToken")
    check(again.commands.run(SLEEPERS).stdout.strip() == "0", "the background=True command was ended by the pause")
    check(Sandbox.connect(sid).commands.run("echo running").stdout == "running\n", "connect to a running sandbox")
    check(sid in ids([SandboxState.RUNNING]), "Sandbox.list(state=[running]) shows it again")
    return sid


async def async_pause_and_connect(sid):
    check(await AsyncSandbox.pause(sid, strict=True) is True, "async pause (strict: the guest agent answered)")
    check((await AsyncSandbox.get_info(sid)).state == SandboxState.PAUSED, "async get_info: paused")
    sbx = await AsyncSandbox.connect(sid, timeout=120)
    info = await sbx.get_info()
    check(info.state == SandboxState.RUNNING, "AsyncSandbox.connect resumes it")
    left = info.end_at.timestamp() - time.time()
    check(100 < left <= 121, f"connect's timeout is its lifetime from now ({left:.0f}s left)")
    check(await sbx.files.read("/tmp/kept.txt") == "kept across pause", "async: its file is there")


def kill_paused(sid):
    check(Sandbox.pause(sid) is True, "pause again")
    check(Sandbox.kill(sid) is True, "kill of a paused sandbox")
    raises(NotFoundException, lambda: Sandbox.get_info(sid), "a killed paused sandbox is not found")
    raises(NotFoundException, lambda: Sandbox.connect(sid), "connect to a killed paused sandbox: not found")
    check(Sandbox.kill(sid) is False, "kill again says not found")


def main():
    sid = sync_pause_and_connect()
    asyncio.run(async_pause_and_connect(sid))
    kill_paused(sid)
    check(ids() == [], "no sandbox left, running or paused")
    print("e2b-test: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
