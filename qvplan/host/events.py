"""Event fan-out: every listener gets its own copy (qemu.qmp's events.py pattern).

Topics are strings (a VM name, or "host"). Listeners subscribe before they read, so an event
published after subscribe() is never missed; a slow listener's queue is bounded and drops its
oldest events rather than blocking the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

Event = dict[str, Any]


class EventHub:
    def __init__(self, backlog: int = 1000) -> None:
        self._listeners: dict[str, set[asyncio.Queue[Event]]] = {}
        self._backlog = backlog
        self._last: dict[str, Event] = {}
        self._observers: list[Callable[[Event], None]] = []

    def observe(self, callback: Callable[[Event], None]) -> None:
        """Call `callback` with every event of every topic, synchronously as it is published
        (metrics, the pass history): it must be quick and must not raise."""
        self._observers.append(callback)

    def publish(self, topic: str, kind: str, **fields: Any) -> Event:
        event: Event = {"event": kind, "topic": topic, "time": time.time(), **fields}
        self._last[topic] = event
        for queue in self._listeners.get(topic, ()):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        for callback in self._observers:
            try:
                callback(event)
            except Exception:  # an observer's bug must not break a migration
                logging.getLogger(__name__).exception("event observer failed on %s", kind)
        return event

    def last(self, topic: str) -> Event | None:
        return self._last.get(topic)

    @contextlib.contextmanager
    def subscribe(self, topic: str):
        queue: asyncio.Queue[Event] = asyncio.Queue(self._backlog)
        self._listeners.setdefault(topic, set()).add(queue)
        try:
            yield queue
        finally:
            self._listeners[topic].discard(queue)

    async def stream(self, topic: str, until: set[str] | None = None) -> AsyncIterator[Event]:
        """Yield events of `topic`; stop after an event whose kind is in `until`."""
        with self.subscribe(topic) as queue:
            async for event in drain(queue, until):
                yield event


async def drain(queue: asyncio.Queue[Event], until: Collection[str] | None = None) -> AsyncIterator[Event]:
    """Yield a subscription's events; stop after one whose kind is in `until`."""
    while True:
        event = await queue.get()
        yield event
        if until and event["event"] in until:
            return
