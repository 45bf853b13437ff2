"""Assertions the E2B SDK sessions share: each prints what it checked, so a
failing session shows how far it got."""

import time


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def eventually(fn, what, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if fn():
            print(f"ok: {what}", flush=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {limit}s: {what}")


def raises(exc, fn, what):
    try:
        fn()
    except exc as e:
        check(True, f"{what} ({type(e).__name__}: {e})")
        return e
    raise AssertionError(f"{what}: no {exc.__name__}")
