"""A client for an agent's HTTP API: the local CLI uses it directly, qvplan through SSH."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..errors import QVError


class AgentUnreachable(QVError):
    pass


class AgentClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use AgentClient as an async context manager")
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/api/v1/{path.lstrip('/')}"
        try:
            async with self.session.request(method, url, json=body) as resp:
                data = await resp.json(content_type=None)
        except aiohttp.ClientConnectionError as err:
            raise AgentUnreachable(f"cannot reach the quantavirt agent at {self.base_url}: {err}",
                                   "start it with `quantavirt agent` or check [api] listen in the config") from None
        if resp.status >= 400:
            raise QVError.from_dict(data if isinstance(data, dict) else {"error": f"HTTP {resp.status}"})
        return data

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, body if body is not None else {})

    async def events(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events from `path` (each `data:` line parsed as JSON)."""
        url = f"{self.base_url}/api/v1/{path.lstrip('/')}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self.session.get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    data = await resp.json(content_type=None)
                    raise QVError.from_dict(data if isinstance(data, dict) else {"error": f"HTTP {resp.status}"})
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
        except aiohttp.ClientConnectionError as err:
            raise AgentUnreachable(f"lost the quantavirt agent at {self.base_url}: {err}") from None
