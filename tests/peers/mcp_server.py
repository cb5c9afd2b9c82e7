"""An MCP server written with the official Python SDK's FastMCP (now `MCPServer`), for
Reflex's MCP client interop tests and the MCP benchmark's peer.

Usage: python mcp_server.py [--port N] [--drift]
Serves stateless streamable HTTP with JSON responses on 127.0.0.1:N/mcp (0 = any free port)
and prints "READY <port>" once listening. --drift changes get_pod's input schema, as an
upgraded server would.
"""
import argparse
import socket

import anyio
import uvicorn
from pydantic import BaseModel

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations


class Pod(BaseModel):
    name: str
    namespace: str
    phase: str


def build(drift: bool) -> MCPServer:
    server = MCPServer("python-peer", version="1.0.0", log_level="WARNING")
    read_only = ToolAnnotations(readOnlyHint=True)

    if drift:
        @server.tool(annotations=read_only)
        def get_pod(namespace: str, name: str, include_events: bool) -> Pod:
            """Get a pod (v2: a new required argument)."""
            return Pod(name=name, namespace=namespace, phase="Running")
    else:
        @server.tool(annotations=read_only)
        def get_pod(namespace: str, name: str) -> Pod:
            """Get a pod by namespace and name."""
            if name == "missing":
                raise ToolError(f"pod {namespace}/{name} not found")
            return Pod(name=name, namespace=namespace, phase="Running")

    @server.tool()
    async def slow(seconds: float = 30.0) -> str:
        """Sleep (for timeout and cancellation tests)."""
        await anyio.sleep(seconds)
        return "done"

    return server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--drift", action="store_true")
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    app = build(args.drift).streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, host="127.0.0.1"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    anyio.run(server.serve, [sock])


if __name__ == "__main__":
    main()
