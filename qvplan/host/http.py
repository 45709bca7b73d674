"""What every route module of the agent's HTTP API shares: JSON errors and server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from ..errors import QVError
from ..vmm.spec import describe_error
from .events import Event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, cause: str, fix: str | None = None) -> web.Response:
    return web.json_response({"error": cause, "fix": fix}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except QVError as err:
        status = 404 if str(err.cause).startswith("unknown VM") else 409
        return error_response(status, err.cause, err.fix)
    except ValidationError as err:
        cause, fix = describe_error(err)
        return error_response(400, cause, fix)
    except json.JSONDecodeError:
        return error_response(400, "request body is not JSON")


async def sse(request: web.Request, events: AsyncIterator[Event], first: Event | None = None) -> web.StreamResponse:
    """Stream events as server-sent events (works with `curl -N`)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    if first is not None:
        await resp.write(f"event: {first['event']}\ndata: {json.dumps(first)}\n\n".encode())
    async for event in events:
        await resp.write(f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode())
    await resp.write_eof()
    return resp
