"""Authentication and limits through the official E2B Python SDK against
`ironclaw serve --e2b --max-sandboxes 1`: a wrong API key raises
AuthenticationException, a wrong sandbox access token is refused, an
unknown template is named, the sandbox limit raises RateLimitException.
Prints `e2b-test: PASS` at the end."""

import os
import sys

import httpx

from e2b import AuthenticationException, RateLimitException, Sandbox, SandboxException
from checks import check, raises


def main():
    url = os.environ["E2B_API_URL"]
    raises(AuthenticationException, lambda: Sandbox.create(api_key="0" * 64), "create with a wrong API key")
    raises(AuthenticationException, lambda: Sandbox.list(api_key="x" * 64).next_items(), "list with a wrong API key")
    e = raises(SandboxException, lambda: Sandbox.create("no-such-template"), "an unknown template")
    check("no-such-template" in str(e), "the error names the template")

    sbx = Sandbox.create(timeout=120)
    envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    r = httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/"}, headers={**envd, "X-Access-Token": "wrong"})
    check(r.status_code == 401 and r.json()["code"] == 401, f"envd with a wrong access token: {r.status_code} {r.text}")
    r = httpx.get(f"{url}/health", headers=envd)
    check(r.status_code == 401, "envd without an access token")
    r = httpx.get(f"{url}/sandboxes/{sbx.sandbox_id}")
    check(r.status_code == 401 and r.json()["code"] == 401, "the control plane without X-API-KEY")
    raises(RateLimitException, lambda: Sandbox.create(), "a create beyond --max-sandboxes")
    sbx.kill()
    again = Sandbox.create()
    check(again.commands.run("echo ok").stdout == "ok\n", "the place is free again after kill")
    again.kill()
    print("e2b-test: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
