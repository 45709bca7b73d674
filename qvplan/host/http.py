"""What every route module of the agent's HTTP API shares: JSON errors and server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from ..contract.reasons import Reason
from ..errors import QVError
from ..vmm.spec import describe_error
from .events import Event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


# The HTTP status of an error answer, from its reason code (409 for any other refusal).
STATUS_OF: dict[str, int] = {Reason.UNKNOWN_VM: 404, Reason.NO_MIGRATION: 404, Reason.BAD_REQUEST: 400,
                             Reason.FORBIDDEN: 403, Reason.MONITOR_DISABLED: 403, Reason.READ_ONLY_API: 405}


def error_response(err: QVError) -> web.Response:
    """`{error, fix, code}` with the status its code calls for."""
    return web.json_response(err.as_dict(), status=STATUS_OF.get(err.code, 409))


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except QVError as err:
        return error_response(err)
    except ValidationError as err:
        return error_response(QVError(*describe_error(err), code=Reason.BAD_REQUEST))
    except json.JSONDecodeError:
        return error_response(QVError("request body is not JSON", "send a JSON object", code=Reason.BAD_REQUEST))


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
