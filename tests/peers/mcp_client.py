"""The official Python MCP SDK's client against Reflex's MCP server (interop test peer).

Usage: python mcp_client.py URL TOKEN MODE
MODE: "legacy" (initialize handshake, protocol 2025-11-25) or "2026-07-28".
Prints one JSON object per step on stdout; the Rust test asserts on them.
"""
import json
import sys
import time

import anyio
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def main(url, token, mode):
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=30) as c:
            say("initialize", protocol=c.protocol_version,
                server=(c.server_info.name if c.server_info else None))
            tools = await c.list_tools()
            say("list_tools", names=sorted(t.name for t in tools.tools),
                with_output_schema=sum(1 for t in tools.tools if t.output_schema))
            r = await c.call_tool("get_resource", {"kind": "Deployment", "namespace": "shop", "name": "checkout"})
            say("call_tool", is_error=r.is_error, structured=r.structured_content)
            r = await c.call_tool("get_resource", {"kind": "Deployment", "namespace": "shop", "name": "missing"})
            say("call_tool_error", is_error=r.is_error, text=[getattr(x, "text", "") for x in r.content])
            rr = await c.read_resource("remediation://shop/checkout-oom-checkout-1")
            say("read_resource", uri=str(rr.contents[0].uri), text=getattr(rr.contents[0], "text", ""))
            p = await c.get_prompt("diagnose_alert", {"alertname": "KubeContainerOOMKilled", "namespace": "shop"})
            say("get_prompt", text=p.messages[0].content.text)
            # A slow call (the test's Prometheus never answers), cancelled after 1 s.
            t0 = time.monotonic()
            with anyio.move_on_after(1.0) as scope:
                await c.call_tool("query_prometheus", {"query": "up"})
            say("cancel", cancelled=scope.cancelled_caught, after=round(time.monotonic() - t0, 2))
            # Still usable afterwards.
            r = await c.call_tool("list_remediations", {"namespace": "shop"})
            say("after_cancel", is_error=r.is_error, count=len((r.structured_content or {}).get("remediations", [])))


if __name__ == "__main__":
    try:
        anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
    except BaseException as e:  # exceptions leave the client as nested ExceptionGroups
        while isinstance(e, BaseExceptionGroup):
            e = e.exceptions[0]
        say("error", type=type(e).__name__, message=str(e))
        sys.exit(1)
