"""The official E2B Python SDK (sync and async), unchanged, against
`ironclaw serve --e2b`. Run by orchestrator/tests/e2b_python.rs with
E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set; fails on the first wrong
answer and prints `e2b-test: PASS` at the end."""

import asyncio
import hashlib
import io
import os
import sys
import time

from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileNotFoundException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
)
from checks import check, eventually


def read_or_none(sbx, path):
    try:
        return sbx.files.read(path)
    except NotFoundException:
        return None


def commands(sbx):
    r = sbx.commands.run("python3 -c 'print(6*7)'")
    check(r.stdout == "42\n" and r.exit_code == 0, "run: stdout and exit code 0")
    r = sbx.commands.run("echo out; echo err >&2")
    check((r.stdout, r.stderr) == ("out\n", "err\n"), "run: stdout and stderr apart")
    check(sbx.commands.run("echo $GREETING").stdout == "hello e2b\n", "envs of create reach commands")
    check(sbx.commands.run("echo $X", envs={"X": "per-command"}).stdout == "per-command\n", "envs of run")
    check(sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n", "cwd of run")
    try:
        sbx.commands.run("echo bad >&2; exit 3")
        raise AssertionError("a non-zero exit did not raise")
    except CommandExitException as e:
        check(e.exit_code == 3 and "bad" in e.stderr, "non-zero exit raises CommandExitException with code and stderr")

    # on_stdout hears output while the command still runs.
    t0 = time.monotonic()
    heard = []
    r = sbx.commands.run(
        "echo first; sleep 3; echo second",
        on_stdout=lambda s: heard.append((time.monotonic() - t0, s)),
    )
    total = time.monotonic() - t0
    check(heard and heard[0][1].startswith("first"), f"on_stdout chunks {heard!r}")
    check(heard[0][0] < total - 2, f"first chunk at {heard[0][0]:.2f}s, command took {total:.2f}s: streamed before the end")
    check(r.stdout == "first\nsecond\n", "the result has all output too")

    # Background command, stdin, kill.
    h = sbx.commands.run("cat > /tmp/in", background=True, stdin=True)
    check(h.pid > 0, f"background command has a pid ({h.pid})")
    check(h.pid in [p.pid for p in sbx.commands.list()], "commands.list shows it")
    sbx.commands.send_stdin(h.pid, "hi\n")
    eventually(lambda: read_or_none(sbx, "/tmp/in") == "hi\n", "send_stdin reached the command")
    check(sbx.commands.kill(h.pid) is True, "kill of a running command")
    try:
        h.wait()
        raise AssertionError("a killed command ended cleanly")
    except CommandExitException as e:
        check(e.exit_code != 0, f"a killed command ends with exit code {e.exit_code}")
    check(sbx.commands.kill(h.pid) is False, "kill of an ended command says not found")

    # Disconnect leaves the command running; connect follows it again.
    h = sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.5; done", background=True)
    h.disconnect()
    r = sbx.commands.connect(h.pid).wait()
    check("line3" in r.stdout and r.exit_code == 0, f"connect by pid after disconnect ({r.stdout!r})")

    # stdin closed: a reader sees EOF.
    h = sbx.commands.run("wc -c", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "12345")
    sbx.commands.close_stdin(h.pid)
    check(h.wait().stdout.strip() == "5", "close_stdin ends the input")


def files(sbx):
    info = sbx.files.write("/tmp/dir/a.txt", "hello")
    check(info.path == "/tmp/dir/a.txt" and info.name == "a.txt", "write (multipart) makes the directory")
    check(sbx.files.read("/tmp/dir/a.txt") == "hello", "read it back")
    check([e.name for e in sbx.files.list("/tmp/dir")] == ["a.txt"], "list")
    entry = sbx.files.get_info("/tmp/dir/a.txt")
    check(entry.size == 5 and entry.type.value == "file", f"get_info {entry}")
    check(sbx.files.exists("/tmp/dir/a.txt") and not sbx.files.exists("/tmp/nope"), "exists")
    check(sbx.files.make_dir("/tmp/newdir/sub") is True, "make_dir")
    check(sbx.files.make_dir("/tmp/newdir/sub") is False, "make_dir of an existing one says so")
    deep = sbx.files.list("/tmp/newdir", depth=2)
    check(sorted(e.path for e in deep) == ["/tmp/newdir/sub"], "list to a depth")
    moved = sbx.files.rename("/tmp/dir/a.txt", "/tmp/dir/b.txt")
    check(moved.name == "b.txt" and not sbx.files.exists("/tmp/dir/a.txt"), "rename")
    sbx.files.remove("/tmp/dir")
    check(not sbx.files.exists("/tmp/dir/b.txt"), "remove a directory")
    try:
        sbx.files.read("/tmp/nope")
        raise AssertionError("reading a missing file did not raise")
    except (FileNotFoundException, NotFoundException):
        check(True, "reading a missing file raises not found")
    sbx.files.write("/tmp/octet.txt", io.BytesIO(b"octet"))
    check(sbx.files.read("/tmp/octet.txt") == "octet", "write (octet-stream)")
    sbx.files.write("/tmp/gz.txt", b"gzipped " * 1000, gzip=True)
    check(sbx.files.read("/tmp/gz.txt") == "gzipped " * 1000, "write (octet-stream, gzip)")
    written = sbx.files.write_files([{"path": "/tmp/m/1", "data": "one"}, {"path": "/tmp/m/2", "data": "two"}])
    check([w.path for w in written] == ["/tmp/m/1", "/tmp/m/2"], "write_files: several parts")
    check(sbx.files.read("/tmp/m/2") == "two", "each part to its own path")

    data = os.urandom(16 << 20)
    want = hashlib.sha256(data).hexdigest()
    sbx.files.write("/tmp/big.bin", data)
    check(sbx.commands.run("sha256sum /tmp/big.bin").stdout.split()[0] == want, "16 MiB upload: SHA-256 in the sandbox")
    back = sbx.files.read("/tmp/big.bin", format="bytes")
    check(hashlib.sha256(bytes(back)).hexdigest() == want, "16 MiB download: SHA-256 matches")


def lifecycle():
    sbx = Sandbox.create(timeout=60, metadata={"suite": "e2b-expiry"})
    ids = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-expiry"})).next_items()]
    check(ids == [sbx.sandbox_id], "Sandbox.list filtered by metadata")
    sbx.set_timeout(2)
    info = sbx.get_info()
    check((info.end_at - info.started_at).total_seconds() < 10, "set_timeout moves end_at")
    eventually(lambda: not sbx.is_running(), "the sandbox expires after its timeout")
    try:
        sbx.get_info()
        raise AssertionError("an expired sandbox still has info")
    except NotFoundException:
        check(True, "an expired sandbox is not found")
    check(Sandbox.kill(sbx.sandbox_id) is False, "kill of an expired sandbox says not found")


def sync_session():
    sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b-sync"}, envs={"GREETING": "hello e2b"})
    check(sbx.is_running(), "create: running")
    check(sbx.get_info().metadata == {"suite": "e2b-sync"}, "metadata kept")
    listed = [s.sandbox_id for s in Sandbox.list().next_items()]
    check(sbx.sandbox_id in listed, "Sandbox.list shows it")
    again = Sandbox.connect(sbx.sandbox_id)
    check(again.commands.run("echo again").stdout == "again\n", "Sandbox.connect")
    commands(sbx)
    files(sbx)
    sbx.kill()
    check(not sbx.is_running(), "kill")
    lifecycle()


async def async_session():
    sbx = await AsyncSandbox.create(timeout=120, envs={"GREETING": "hello async"})
    r = await sbx.commands.run("echo $GREETING; echo err >&2")
    check((r.stdout, r.stderr, r.exit_code) == ("hello async\n", "err\n", 0), "async run")
    try:
        await sbx.commands.run("exit 4")
        raise AssertionError("async: a non-zero exit did not raise")
    except CommandExitException as e:
        check(e.exit_code == 4, "async: non-zero exit raises CommandExitException")
    heard = []
    t0 = time.monotonic()
    await sbx.commands.run("echo first; sleep 2; echo second", on_stdout=lambda s: heard.append(time.monotonic() - t0))
    check(heard and heard[0] < time.monotonic() - t0 - 1.5, "async on_stdout before the end")
    h = await sbx.commands.run("cat > /tmp/in", background=True, stdin=True)
    await sbx.commands.send_stdin(h.pid, "async\n")
    for _ in range(100):
        if await sbx.files.exists("/tmp/in") and await sbx.files.read("/tmp/in") == "async\n":
            break
        await asyncio.sleep(0.2)
    check(await sbx.files.read("/tmp/in") == "async\n", "async send_stdin")
    check(await sbx.commands.kill(h.pid) is True, "async kill of a command")
    await sbx.files.write("/tmp/a.txt", "async file")
    check(await sbx.files.read("/tmp/a.txt") == "async file", "async write/read")
    check([e.name for e in await sbx.files.list("/tmp") if e.name == "a.txt"] == ["a.txt"], "async list")
    check(await sbx.files.exists("/tmp/a.txt"), "async exists")
    await sbx.files.remove("/tmp/a.txt")
    check(not await sbx.files.exists("/tmp/a.txt"), "async remove")
    check(await sbx.files.make_dir("/tmp/adir") is True, "async make_dir")
    data = os.urandom(16 << 20)
    await sbx.files.write("/tmp/big.bin", data)
    back = await sbx.files.read("/tmp/big.bin", format="bytes")
    check(hashlib.sha256(bytes(back)).digest() == hashlib.sha256(data).digest(), "async 16 MiB round trip")
    await sbx.set_timeout(60)
    listed = [s.sandbox_id for s in await AsyncSandbox.list().next_items()]
    check(sbx.sandbox_id in listed, "AsyncSandbox.list")
    await sbx.kill()
    check(not await sbx.is_running(), "async kill")


def main():
    sync_session()
    asyncio.run(async_session())
    left = Sandbox.list().next_items()
    check(left == [], f"no sandbox left ({[s.sandbox_id for s in left]})")
    print("e2b-test: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
