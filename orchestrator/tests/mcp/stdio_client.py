"""The official Python MCP client against `ironclaw mcp` over stdio.

Usage: stdio_client.py IRONCLAW_BIN RUNTIME_ROOT"""

import asyncio
import os
import sys

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

import flow


async def main():
    binary, root = sys.argv[1], sys.argv[2]
    # The SDK passes only a safe subset of the environment; the service needs
    # its runtime root (and the test's guest binary, if set) too.
    env = dict(os.environ, IRONCLAW_RUNTIME_DIR=root)
    params = StdioServerParameters(command=binary, args=["mcp"], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            info = await session.initialize()
            assert info.server_info.name == "ironclaw", info
            assert "sandbox_create" in (info.instructions or ""), info
            await flow.run(session)


if __name__ == "__main__":
    asyncio.run(main())
