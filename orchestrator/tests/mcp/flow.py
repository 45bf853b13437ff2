"""The session every MCP test runs, whatever the transport: the tools an
agent sees, and a sandbox used the way an agent uses one. Each step checks
what the server answered; the first failed check ends the script with a
non-zero status (an AssertionError naming the step)."""

import asyncio
import base64
import json
import time

EXPECTED_TOOLS = {
    "sandbox_create",
    "sandbox_list",
    "sandbox_destroy",
    "sandbox_exec",
    "sandbox_exec_start",
    "sandbox_exec_poll",
    "sandbox_exec_write_stdin",
    "sandbox_exec_signal",
    "sandbox_fs_read",
    "sandbox_fs_write",
    "sandbox_fs_list",
    "sandbox_fs_remove",
    "run_code",
    "sandbox_snapshot",
    "sandbox_fork",
    "sandbox_pause",
    "sandbox_resume",
    "snapshot_list",
    "snapshot_remove",
}


def log(*args):
    print("mcp-test:", *args, flush=True)


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call(session, name, args):
    """A tool call that must succeed; its structured result."""
    result = await session.call_tool(name, args)
    assert not result.is_error, f"{name}({args}) failed: {text_of(result)}"
    data = result.structured_content
    assert isinstance(data, dict), f"{name}: no structured content: {result}"
    # The text content is the same JSON, for clients that read only text.
    assert json.loads(text_of(result)) == data, f"{name}: text and structured content differ"
    return data


async def call_error(session, name, args, code):
    """A tool call that must fail with the service error `code`."""
    result = await session.call_tool(name, args)
    assert result.is_error, f"{name}({args}) should have failed with {code}: {result}"
    text = text_of(result)
    assert text.startswith(code + ": "), f"{name}: expected {code}, got {text!r}"
    assert result.structured_content["code"] == code, result.structured_content
    return text


async def poll_until(session, sid, cid, cursor, done, what, limit=60):
    """Polls a background command until done(stdout, page); returns (stdout, stderr, page)."""
    stdout, stderr = "", ""
    deadline = time.monotonic() + limit
    while True:
        page = await call(
            session,
            "sandbox_exec_poll",
            {"sandbox_id": sid, "command_id": cid, "cursor": cursor, "wait_ms": 2000},
        )
        assert page["next_cursor"] >= cursor, page
        assert len(page["stdout"]) + len(page["stderr"]) <= 256 << 10, page["next_cursor"]
        cursor = page["next_cursor"]
        stdout += page["stdout"]
        stderr += page["stderr"]
        if done(stdout, page):
            return stdout, stderr, page
        assert time.monotonic() < deadline, f"{what}: not done after {limit}s: {stdout!r} {page}"


async def branching(session):
    """A sandbox snapshotted, a copy made from the snapshot (by name),
    paused and resumed, and forked: the file written first is in each; all
    sandboxes and snapshots are removed at the end."""
    box = await call(session, "sandbox_create", {"timeout_s": 300})
    sid = box["id"]
    made = [sid]
    try:
        await call(session, "sandbox_fs_write", {"sandbox_id": sid, "path": "notes.txt", "content": "kept\n"})
        snap = await call(session, "sandbox_snapshot", {"sandbox_id": sid, "name": "mcp-notes"})
        assert snap["id"].startswith("snap-") and snap["name"] == "mcp-notes", snap
        assert snap["source_sandbox"] == sid and snap["bytes"] > 0, snap
        log("snapshot", snap["id"], f"{snap['bytes'] >> 20} MiB, paused {snap['pause_ms']} ms")

        copy = await call(session, "sandbox_create", {"from_snapshot": "mcp-notes", "timeout_s": 300})
        cid = copy["id"]
        made.append(cid)
        assert cid != sid and copy["from_snapshot"] == snap["id"] and copy["state"] == "running", copy
        read = await call(session, "sandbox_fs_read", {"sandbox_id": cid, "path": "notes.txt"})
        assert read["content"] == "kept\n", read

        paused = await call(session, "sandbox_pause", {"sandbox_id": cid})
        assert paused["id"] == cid and paused["state"] == "paused" and paused["paused_bytes"] > 0, paused
        text = await call_error(session, "sandbox_fs_read", {"sandbox_id": cid, "path": "notes.txt"}, "sandbox_paused")
        assert "sandbox_resume" in text, text
        listed = await call(session, "sandbox_list", {})
        states = {s["id"]: s["state"] for s in listed["sandboxes"]}
        assert states == {sid: "running", cid: "paused"}, states
        resumed = await call(session, "sandbox_resume", {"sandbox_id": cid})
        assert resumed["id"] == cid and resumed["state"] == "running", resumed
        read = await call(session, "sandbox_fs_read", {"sandbox_id": cid, "path": "notes.txt"})
        assert read["content"] == "kept\n", read
        log("paused and resumed", cid)

        forked = await call(session, "sandbox_fork", {"sandbox_id": sid})
        assert len(forked["sandboxes"]) == 1 and forked["snapshot"]["source_sandbox"] == sid, forked
        fid = forked["sandboxes"][0]["id"]
        made.append(fid)
        read = await call(session, "sandbox_fs_read", {"sandbox_id": fid, "path": "/work/notes.txt"})
        assert read["content"] == "kept\n", read

        listed = await call(session, "snapshot_list", {})
        ids = {s["id"] for s in listed["snapshots"]}
        assert ids == {snap["id"], forked["snapshot"]["id"]}, listed
        for removed in ("mcp-notes", forked["snapshot"]["id"]):
            assert await call(session, "snapshot_remove", {"snapshot_id": removed}) == {"removed": removed}
        assert (await call(session, "snapshot_list", {}))["snapshots"] == []
        await call_error(session, "snapshot_remove", {"snapshot_id": "mcp-notes"}, "not_found")
        await call_error(session, "sandbox_create", {"from_snapshot": snap["id"]}, "not_found")
    finally:
        for made_id in made:
            await call(session, "sandbox_destroy", {"sandbox_id": made_id})
    listed = await call(session, "sandbox_list", {})
    assert listed["sandboxes"] == [], listed
    log("snapshots ok")


async def run(session):
    tools = await session.list_tools()
    names = {t.name for t in tools.tools}
    assert EXPECTED_TOOLS <= names, f"missing tools: {EXPECTED_TOOLS - names}"
    for t in tools.tools:
        assert t.description and len(t.description) > 40, f"{t.name}: no useful description"
        assert t.input_schema.get("type") == "object", t
    exec_props = next(t for t in tools.tools if t.name == "sandbox_exec").input_schema["properties"]
    assert {"sandbox_id", "cmd", "argv", "stdin", "timeout_s", "env", "cwd"} <= set(exec_props), exec_props
    log(f"{len(names)} tools listed")

    # The whole flow: create, write a file, a python3 that reads it and
    # writes another, read that back, destroy.
    box = await call(session, "sandbox_create", {"labels": {"test": "mcp"}, "timeout_s": 300})
    sid = box["id"]
    assert sid.startswith("sb-") and box["cwd"] == "/work", box
    log("created", sid)
    try:
        written = await call(
            session,
            "sandbox_fs_write",
            {"sandbox_id": sid, "path": "data/input.txt", "content": "hello from mcp\n"},
        )
        assert written == {"path": "/work/data/input.txt", "bytes": 15}, written
        script = (
            "import sys\n"
            "text = open('data/input.txt').read()\n"
            "open('/work/out.txt', 'w').write(text.upper())\n"
            "print('read', len(text), 'bytes'); print('warn', file=sys.stderr)\n"
            "sys.exit(3)\n"
        )
        done = await call(session, "sandbox_exec", {"sandbox_id": sid, "argv": ["python3", "-c", script]})
        assert done["exit_code"] == 3 and not done["timed_out"], done
        assert done["stdout"] == "read 15 bytes\n" and done["stderr"] == "warn\n", done
        read = await call(session, "sandbox_fs_read", {"sandbox_id": sid, "path": "/work/out.txt"})
        assert read["content"] == "HELLO FROM MCP\n" and read["size"] == 15 and not read["truncated"], read

        # Binary content both ways.
        blob = bytes(range(256))
        await call(
            session,
            "sandbox_fs_write",
            {"sandbox_id": sid, "path": "/tmp/blob.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"},
        )
        back = await call(session, "sandbox_fs_read", {"sandbox_id": sid, "path": "/tmp/blob.bin", "encoding": "base64"})
        assert base64.b64decode(back["content"]) == blob, back
        # /tmp kept its mode (only missing parents are made).
        mode = await call(session, "sandbox_exec", {"sandbox_id": sid, "cmd": "stat -c %a /tmp"})
        assert mode["stdout"].strip() == "1777", mode

        # A big file is cut at 256 KiB, and says so; so is a long poll.
        await call(session, "sandbox_exec", {"sandbox_id": sid, "cmd": "head -c 1500000 /dev/zero | tr '\\0' x > big.txt"})
        big = await call(session, "sandbox_fs_read", {"sandbox_id": sid, "path": "big.txt"})
        assert big["truncated"] and big["size"] == 1500000 and len(big["content"]) == 256 << 10, {k: v for k, v in big.items() if k != "content"}
        assert "tail -c +262145" in big["note"], big["note"]
        big = await call(session, "sandbox_fs_read", {"sandbox_id": sid, "path": "big.txt", "encoding": "base64"})
        assert base64.b64decode(big["content"]) == b"x" * (256 << 10), len(big["content"])
        # Within the 1 MiB output ring a background command keeps: several polls, nothing lost.
        started = await call(session, "sandbox_exec_start", {"sandbox_id": sid, "cmd": "head -c 900000 big.txt"})
        out, _, page = await poll_until(session, sid, started["command_id"], 0, lambda o, p: not p["running"], "head big.txt")
        assert out == "x" * 900000 and page["end"]["exit_code"] == 0, (len(out), {k: v for k, v in page.items() if k != "stdout"})

        listing = await call(session, "sandbox_fs_list", {"sandbox_id": sid})
        entries = {e["name"]: e["kind"] for e in listing["entries"]}
        assert entries.get("data") == "dir" and entries.get("out.txt") == "file", listing
        await call(session, "sandbox_fs_remove", {"sandbox_id": sid, "path": "data", "recursive": True})
        await call_error(session, "sandbox_fs_read", {"sandbox_id": sid, "path": "data/input.txt"}, "not_found")

        # Output capped, shell line, stdin, env.
        capped = await call(
            session,
            "sandbox_exec",
            {"sandbox_id": sid, "cmd": "cat; echo $GREETING; seq 1 100000", "stdin": "in:", "env": {"GREETING": "hi"}, "max_output_bytes": 1000},
        )
        assert capped["stdout"].startswith("in:hi\n1\n2\n") and len(capped["stdout"]) == 1000 and capped["stdout_truncated"], capped
        await call_error(session, "sandbox_exec", {"sandbox_id": sid}, "bad_request")

        # A background command fed through stdin, read through polls.
        started = await call(session, "sandbox_exec_start", {"sandbox_id": sid, "cmd": "cat; echo done >&2", "keep_stdin_open": True})
        cid = started["command_id"]
        await call(session, "sandbox_exec_write_stdin", {"sandbox_id": sid, "command_id": cid, "data": "line one\n"})
        out, _, page = await poll_until(session, sid, cid, 0, lambda o, p: "line one\n" in o, "echo of stdin")
        assert page["running"], page
        await call(session, "sandbox_exec_write_stdin", {"sandbox_id": sid, "command_id": cid, "data": "last\n", "close": True})
        out2, err, page = await poll_until(session, sid, cid, page["next_cursor"], lambda o, p: not p["running"], "end after EOF")
        assert out + out2 == "line one\nlast\n" and err == "done\n", (out, out2, err)
        assert page["end"]["exit_code"] == 0, page

        # A signal ends a command that would run on.
        started = await call(session, "sandbox_exec_start", {"sandbox_id": sid, "argv": ["sleep", "600"]})
        await call(session, "sandbox_exec_signal", {"sandbox_id": sid, "command_id": started["command_id"], "signal": "KILL"})
        _, _, page = await poll_until(session, sid, started["command_id"], 0, lambda o, p: not p["running"], "end after KILL")
        assert page["end"]["signal"] == 9, page

        listed = await call(session, "sandbox_list", {})
        assert sid in [s["id"] for s in listed["sandboxes"]], listed
        await call_error(session, "sandbox_exec", {"sandbox_id": "sb-0000000000000000", "cmd": "true"}, "not_found")
    finally:
        destroyed = await call(session, "sandbox_destroy", {"sandbox_id": sid})
        assert destroyed == {"destroyed": sid}, destroyed
    log("destroyed", sid)
    text = await call_error(session, "sandbox_exec", {"sandbox_id": sid, "cmd": "true"}, "not_found")
    assert "destroyed" in text, text
    listed = await call(session, "sandbox_list", {})
    assert sid not in [s["id"] for s in listed["sandboxes"]], listed

    await branching(session)

    # One-shot code with files; its sandbox is gone afterwards.
    result = await call(
        session,
        "run_code",
        {
            "language": "python",
            "code": "import json\nprint(json.load(open('cfg/in.json'))['n'] * 2)\n",
            "files": {"cfg/in.json": '{"n": 21}'},
        },
    )
    assert result["exit_code"] == 0 and result["stdout"] == "42\n", result
    result = await call(session, "run_code", {"language": "sh", "code": "read x; echo \"got $x\"; exit 4", "stdin": "it\n"})
    assert result["exit_code"] == 4 and result["stdout"] == "got it\n", result
    failed = await call(session, "run_code", {"language": "python", "code": "raise SystemExit('boom')"})
    assert failed["exit_code"] == 1 and "boom" in failed["stderr"], failed
    listed = await call(session, "sandbox_list", {})
    assert listed["sandboxes"] == [], listed
    log("run_code ok")
    log("PASS")
