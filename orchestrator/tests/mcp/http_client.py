"""The official Python MCP client against `/mcp` of `ironclaw serve` over
Streamable HTTP with a bearer token; and the same endpoint refusing a
caller without one.

Usage: http_client.py http://ADDR/mcp TOKEN"""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

import flow

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def status_of(url, headers):
    """The HTTP status of an initialize POST."""
    request = urllib.request.Request(
        url,
        data=json.dumps(INITIALIZE).encode(),
        method="POST",
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


async def main():
    url, token = sys.argv[1], sys.argv[2]
    assert status_of(url, {}) == 401, "no token must be refused"
    assert status_of(url, {"authorization": "Bearer " + "0" * 64}) == 401, "a wrong token must be refused"
    flow.log("refused without the token (401)")

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                assert info.server_info.name == "ironclaw", info
                await flow.run(session)


if __name__ == "__main__":
    asyncio.run(main())
