"""An MCP server written with the official Python SDK's FastMCP (now `MCPServer`), for
Reflex's MCP client interop tests and the MCP benchmark's peer.

Usage: python mcp_server.py [--port N] [--drift] [--kube-url U --kube-token T --kube-ca F]
Serves stateless streamable HTTP with JSON responses on 127.0.0.1:N/mcp (0 = any free port)
and prints "READY <port>" once listening. --drift changes get_pod's input schema, as an
upgraded server would. With --kube-*, it also serves get_resource — the same context tool
as Reflex's, reading the same Kubernetes API — for the MCP benchmark.
"""
import argparse
import socket

import anyio
import httpx2
import uvicorn
from pydantic import BaseModel

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations


class Pod(BaseModel):
    name: str
    namespace: str
    phase: str


class ObjectOutput(BaseModel):
    object: dict


PATHS = {"Deployment": "apis/apps/v1", "ConfigMap": "api/v1", "Pod": "api/v1", "Service": "api/v1"}
PLURALS = {"Deployment": "deployments", "ConfigMap": "configmaps", "Pod": "pods", "Service": "services"}


def build(drift: bool, kube=None) -> MCPServer:
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

    if kube:
        http = httpx2.AsyncClient(verify=kube["ca"], headers={"Authorization": f"Bearer {kube['token']}"},
                                  limits=httpx2.Limits(max_connections=256, max_keepalive_connections=256))

        @server.tool(annotations=read_only)
        async def get_resource(kind: str, namespace: str, name: str) -> ObjectOutput:
            """Get one Kubernetes object (managedFields removed)."""
            if kind not in PATHS:
                raise ToolError(f"unknown kind {kind}")
            r = await http.get(f"{kube['url']}/{PATHS[kind]}/namespaces/{namespace}/{PLURALS[kind]}/{name}")
            if r.status_code != 200:
                raise ToolError(f"{r.status_code}: {r.text}")
            obj = r.json()
            obj.get("metadata", {}).pop("managedFields", None)
            return ObjectOutput(object=obj)

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
    ap.add_argument("--kube-url")
    ap.add_argument("--kube-token")
    ap.add_argument("--kube-ca")
    args = ap.parse_args()
    kube = {"url": args.kube_url, "token": args.kube_token, "ca": args.kube_ca} if args.kube_url else None
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only
    # when the socket says it is TCP (base_events._set_nodelay checks sock.proto), as it does
    # when uvicorn binds the port itself. With proto 0 every keep-alive response after the
    # first waits ~40 ms (Nagle against the client's delayed ACK) — the benchmark's artifact.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    app = build(args.drift, kube).streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, host="127.0.0.1"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    anyio.run(server.serve, [sock])


if __name__ == "__main__":
    main()
