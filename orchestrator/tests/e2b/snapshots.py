"""Snapshots and forks through the official E2B Python SDK, unchanged,
against `ironclaw serve --e2b`: create_snapshot, list_snapshots,
Sandbox.create(<snapshot id>), fork, delete_snapshot. Run by
orchestrator/tests/e2b_python.rs with E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY set; fails on the first wrong answer and prints
`e2b-test: PASS` at the end."""

import sys
import time

from e2b import Sandbox, SandboxException
from checks import check, eventually, raises

# A process that outlives the command that started it: it counts on while
# the sandbox runs, and its count lives in its memory only.
COUNTER = (
    "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c.tmp; "
    "mv /tmp/c.tmp /tmp/c; sleep 0.2; done' >/dev/null 2>&1 &"
)
NAME = "e2b-snapshot-test"


def counter(sbx):
    return int(sbx.files.read("/tmp/c").strip())


def counts(sbx, what):
    """The counter of `sbx` goes on from where it was."""
    start = counter(sbx)
    check(start >= 3, f"{what}: the counter kept its count ({start})")
    eventually(lambda: counter(sbx) > start, f"{what}: the counter still counts")


def snapshot_ids(**kw):
    return [s.snapshot_id for s in Sandbox.list_snapshots(**kw).next_items()]


def main():
    check(snapshot_ids() == [], "no snapshots at first")
    src = Sandbox.create(timeout=300, metadata={"suite": "e2b-snapshots"})
    src.files.write("/tmp/kept.txt", "kept in the snapshot")
    src.commands.run(COUNTER)
    eventually(lambda: src.files.exists("/tmp/c") and counter(src) >= 3, "the counter counts")

    e = raises(
        SandboxException,
        lambda: src.create_snapshot(mode="filesystem"),
        "a files-only snapshot is refused",
    )
    check("not supported" in str(e), "the refusal says why")

    t0 = time.monotonic()
    snap = src.create_snapshot(name=NAME)
    print(f"create_snapshot: {time.monotonic() - t0:.2f}s -> {snap}", flush=True)
    check(snap.snapshot_id.startswith("snap-"), "create_snapshot answers a snapshot id")
    check(snap.names == [NAME], "and its name")
    check(src.is_running(), "the source runs on")
    counts(src, "the source")

    check(snapshot_ids() == [snap.snapshot_id], "list_snapshots shows it")
    check(
        [s.snapshot_id for s in src.list_snapshots().next_items()] == [snap.snapshot_id],
        "the source's list_snapshots shows it",
    )
    check(snapshot_ids(name=NAME) == [snap.snapshot_id], "listed by name")
    check(snapshot_ids(sandbox_id="no-such-sandbox") == [], "another sandbox has none")
    e = raises(
        SandboxException,
        lambda: src.create_snapshot(name=NAME),
        "a second snapshot by the same name is refused",
    )
    check(getattr(e, "status_code", None) == 409, "with 409")

    # A sandbox from the snapshot (by id): its files, memory and processes.
    t0 = time.monotonic()
    child = Sandbox.create(snap.snapshot_id, timeout=120)
    print(f"create from the snapshot: {time.monotonic() - t0:.2f}s", flush=True)
    check(child.sandbox_id != src.sandbox_id, "a new sandbox")
    check(child.files.read("/tmp/kept.txt") == "kept in the snapshot", "the file is there")
    counts(child, "the sandbox from the snapshot")

    # By its name too.
    named = Sandbox.create(NAME, timeout=120)
    check(named.files.read("/tmp/kept.txt") == "kept in the snapshot", "by name: the file is there")
    check(named.kill() is True, "killed")

    # Fork: one snapshot, two sandboxes; that snapshot is the fork's own.
    t0 = time.monotonic()
    forks = src.fork(count=2, timeout=120)
    print(f"fork(count=2): {time.monotonic() - t0:.2f}s -> {forks}", flush=True)
    check(len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), "two forks")
    check(
        len({f.sandbox_id for f in forks} | {src.sandbox_id, child.sandbox_id}) == 4,
        "each a new sandbox",
    )
    for i, f in enumerate(forks):
        check(f.files.read("/tmp/kept.txt") == "kept in the snapshot", f"fork {i}: the file is there")
        counts(f, f"fork {i}")
    check(snapshot_ids() == [snap.snapshot_id], "a fork's snapshot is not listed")
    e = raises(SandboxException, lambda: src.fork(count=21), "more than 20 forks are refused")

    check(Sandbox.delete_snapshot(snap.snapshot_id) is True, "delete_snapshot deletes it")
    check(snapshot_ids() == [], "list_snapshots no longer shows it")
    check(Sandbox.delete_snapshot(snap.snapshot_id) is False, "deleting it again: not found")
    raises(
        SandboxException,
        lambda: Sandbox.create(snap.snapshot_id),
        "no sandbox from a deleted snapshot",
    )
    counts(child, "the sandbox from the deleted snapshot")

    for s in [src, child, *forks]:
        check(s.kill() is True, f"{s.sandbox_id} killed")
    check(Sandbox.list().next_items() == [], "no sandbox left")
    print("e2b-test: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
