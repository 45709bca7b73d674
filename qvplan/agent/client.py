"""The one client of an agent's HTTP API: requests, server-sent events, and typed errors.

Everything that talks to an agent goes through here: the host CLI and the tests over the agent's
control socket (a Unix socket: every route), `qvplan` (remote/connection.py) over a local Unix
socket that SSH forwards to that control socket; the spec's read-only TCP API takes GETs. One
convention for all of them: paths under `/api/v1/`, JSON both ways, an error answer
`{error, fix, code}` raised as `AgentError` with the HTTP status and the server's reason code,
and events as `event:`/`data:` blocks decoded into one dict each.

Two transports share that convention. `AgentClient` blocks (one request per connection on a
plain socket, `agent/http11.py`, so a host command starts fast: no asyncio, no aiohttp);
`AsyncAgentClient` runs on aiohttp for callers that drive many agents at once (apply), over TCP
or any aiohttp connector.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..contract.reasons import Reason
from ..errors import QVError
from . import http11

if TYPE_CHECKING:
    import aiohttp

START_AGENT = "start it with `quantavirt agent`, or check [api] socket in the config"
NOT_ADMITTED = "run as root, or as a member of the group quantavirt (the control socket's group)"


class AgentError(QVError):
    """The agent answered with an error: its HTTP status and reason code, as the server sent them."""

    def __init__(self, cause: str, fix: str | None = None, *, status: int = 0, code: str | None = None) -> None:
        super().__init__(cause, fix, code=code)
        self.status = status

    @classmethod
    def from_answer(cls, status: int, body: bytes, where: str = "") -> AgentError:
        data = _json(body)
        if not isinstance(data, dict):
            data = {"error": body.decode(errors="replace")[:200] or f"HTTP {status}"}
        cause = str(data.get("error") or f"HTTP {status}")
        return cls(f"{where}{cause}", data.get("fix"), status=status, code=str(data.get("code") or Reason.ERROR))


class AgentUnreachable(AgentError):
    """Nothing (or nothing that speaks HTTP) answers at the agent's API address."""

    code = Reason.AGENT_UNREACHABLE


def api_path(path: str) -> str:
    """`host` or `/api/v1/host` → `/api/v1/host`."""
    return path if path.startswith("/api/") else "/api/v1/" + path.lstrip("/")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _event(name: str | None, data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        event = {"data": data}
    if not isinstance(event, dict):
        event = {"data": event}
    if name and "event" not in event:
        event["event"] = name
    return event


class SSEDecoder:
    """Server-sent events, line by line: `feed` returns an event when a blank line ends one.

    Each event is the JSON of its `data:` lines; an `event:` name is added as "event" when the
    data does not carry one.
    """

    def __init__(self) -> None:
        self._name: str | None = None
        self._lines: list[str] = []

    def feed(self, raw: bytes | str) -> dict[str, Any] | None:
        line = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\r\n")
        if line.startswith("event:"):
            self._name = line[6:].strip()
        elif line.startswith("data:"):
            self._lines.append(line[5:].lstrip())
        elif not line and self._lines:
            return self.flush()
        return None

    def flush(self) -> dict[str, Any] | None:
        if not self._lines:
            return None
        event = _event(self._name, "\n".join(self._lines))
        self._name, self._lines = None, []
        return event


def sse_events(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    decoder = SSEDecoder()
    for line in lines:
        if (event := decoder.feed(line)) is not None:
            yield event
    if (event := decoder.flush()) is not None:
        yield event


class AgentClient:
    """A blocking client of one agent at `address` (HOST:PORT) or at a Unix socket `unix`."""

    def __init__(self, address: str | None = None, *, unix: str | None = None, timeout: float = 30.0,
                 name: str | None = None) -> None:
        if (address is None) == (unix is None):
            raise ValueError("give the agent's address or its unix socket, one of them")
        self.address = address
        self.unix = unix
        self.timeout = timeout
        self.name = name or address or unix or "agent"

    def _where(self) -> tuple[str, int] | str:
        if self.unix is not None:
            return self.unix
        from ..addresses import split_hostport

        return split_hostport(str(self.address))

    def _unreachable(self, err: BaseException) -> AgentError:
        if isinstance(err, PermissionError):  # the control socket's mode keeps this user out
            return AgentError(f"not allowed to use the quantavirt agent's control socket {self.name}",
                              NOT_ADMITTED, code=Reason.FORBIDDEN)
        why = "did not answer in time" if isinstance(err, TimeoutError) else (
            getattr(err, "strerror", None) or str(err) or type(err).__name__)
        return AgentUnreachable(f"cannot reach the quantavirt agent at {self.name}: {why}", START_AGENT)

    def _send(self, method: str, path: str, body: Any, timeout: float | None) -> http11.Response:
        payload = json.dumps(body).encode() if body is not None else None
        try:
            return http11.exchange(self._where(), method, api_path(path), payload, timeout)
        except OSError as err:
            raise self._unreachable(err) from None

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call the API and return the decoded JSON; an error answer raises `AgentError`."""
        resp = self._send(method, path, body, timeout or self.timeout)
        try:
            data = resp.read()
        except OSError as err:
            raise self._unreachable(err) from None
        finally:
            resp.close()
        if resp.status >= 400:
            raise AgentError.from_answer(resp.status, data)
        return _json(data)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body if body is not None else {}, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def events(self, path: str) -> Iterator[dict[str, Any]]:
        """The events of an API stream (e.g. `vms/web-01/migrate/events`) until the agent ends it.

        The stream is opened here, before the first event is asked for, so nothing that happens
        meanwhile is missed.
        """
        resp = self._send("GET", path, None, None)
        if resp.status >= 400:
            try:
                raise AgentError.from_answer(resp.status, resp.read())
            finally:
                resp.close()
        return self._stream(resp)

    def _stream(self, resp: http11.Response) -> Iterator[dict[str, Any]]:
        try:
            yield from sse_events(resp.lines())
        except OSError as err:
            raise self._unreachable(err) from None
        finally:
            resp.close()


def warm_up() -> None:
    """Import aiohttp now (meant for a thread while the caller waits on the network): the first
    request of a command would otherwise pay for it (~0.15 s, its SSL contexts included)."""
    import aiohttp  # noqa: F401


class AsyncAgentClient:
    """The same API on aiohttp, to the agent at `address`: HOST:PORT over TCP, or with `unix` a
    local Unix socket (the control socket, or one that SSH forwards to a host's control socket;
    `address` then only names it in errors).

    Errors start with `name` (e.g. the host's name); `route` tells how the address is reached
    (e.g. " (through SSH)"). Use `async with`, or `close()` when done.
    """

    def __init__(self, address: str, *, unix: str | None = None, name: str | None = None, route: str = "",
                 fix: str = START_AGENT) -> None:
        self.address = address
        self.base = "http://localhost" if unix else f"http://{address}"
        self.unix = unix
        self.name = name or address
        self.route = route
        self.fix = fix
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.UnixConnector(path=self.unix) if self.unix else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _unreachable(self, err: BaseException) -> AgentUnreachable:
        import aiohttp

        if isinstance(err, TimeoutError):
            why = "did not answer in time"
        elif isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
            why = "nothing answers there"
        else:
            why = f"{type(err).__name__}: {err}"
        return AgentUnreachable(f"{self.name}: agent API {self.address}{self.route}: {why}", self.fix)

    async def request(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        """Call the API and return the decoded JSON; an error answer raises `AgentError`."""
        import aiohttp

        try:
            async with self._http().request(method, self.base + api_path(path), json=body,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                data = await resp.read()
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as err:
            raise self._unreachable(err) from None
        if resp.status >= 400:
            raise AgentError.from_answer(resp.status, data, f"{self.name}: {method} {path}: ")
        return _json(data)

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("POST", path, body if body is not None else {}, **kw)

    async def events(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """The events of an API stream, one dict each, until the agent ends it."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self._http().get(self.base + api_path(path), timeout=timeout) as resp:
                if resp.status >= 400:
                    raise AgentError.from_answer(resp.status, await resp.read(), f"{self.name}: GET {path}: ")
                decoder = SSEDecoder()
                async for raw in resp.content:
                    if (event := decoder.feed(raw)) is not None:
                        yield event
                if (event := decoder.flush()) is not None:
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as err:  # a stream cut mid-way too
            raise self._unreachable(err) from None
