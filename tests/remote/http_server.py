"""A small real HTTP server for transport tests: JSON, an error, and an SSE stream.

Run on a lab host: `python http_server.py SOCKET` (a Unix socket path, as the agent's control
socket is). It is not the agent: it lets the SSH tunnel be tested on its own (the agent's API is
tested in tests/agent).
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web


async def host(request: web.Request) -> web.Response:
    return web.json_response({"name": "fake", "version": "0.0.0", "echo": request.query.get("q")})


async def fail(request: web.Request) -> web.Response:
    return web.json_response({"error": "unknown VM nope", "fix": "list VMs"}, status=404)


async def post(request: web.Request) -> web.Response:
    return web.json_response({"got": await request.json()})


async def events(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(f"event: progress\ndata: {json.dumps({'i': i})}\n\n".encode())
        await asyncio.sleep(0.05)
    await resp.write(b'event: done\ndata: {"event": "completed"}\n\n')
    await resp.write_eof()
    return resp


app = web.Application()
app.add_routes([web.get("/api/v1/host", host), web.get("/api/v1/fail", fail), web.post("/api/v1/echo", post),
                web.get("/api/v1/vms/x/migrate/events", events)])
web.run_app(app, path=sys.argv[1], print=None)
