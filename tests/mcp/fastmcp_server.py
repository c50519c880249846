"""An MCP server built with the official SDK's FastMCP: two tools, served over Streamable HTTP
on the port given as argv[1]; writes its URL to argv[2] once it is listening."""

import socket
import sys
import threading
import time

from mcp.server.fastmcp import FastMCP

port = int(sys.argv[1])
mcp = FastMCP("py-tools", host="127.0.0.1", port=port, log_level="WARNING")


@mcp.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@mcp.tool()
def secret(name: str) -> str:
    """Reveals a secret (the RBAC policy denies it)."""
    return f"the secret of {name}"


def announce() -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    with open(sys.argv[2], "w") as f:
        f.write(f"http://127.0.0.1:{port}/mcp")


threading.Thread(target=announce, daemon=True).start()
mcp.run(transport="streamable-http")
