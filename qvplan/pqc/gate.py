"""What a listener allows before a peer has authenticated: few handshakes, and few log lines.

`HandshakeGate` caps the handshakes in progress, over all peers (`total`) and per source address
(`per_source`; an IPv6 source is its /64). A connection over either cap is closed at once,
unread: idle or slow connections from one address cannot use up the agent's file descriptors or
keep trusted peers out. A handshake holds its place only until it completes or its deadline (`accept_channel`'s timeout)
ends it.

`RateLimitedLog` keeps a flood of refused connections from flooding the log: at most `burst`
lines per key per `interval` seconds, then one line saying how many were left out.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_SOURCE = 8


def source_key(address: str) -> str:
    """What counts as one source: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
    /64, so counting single IPv6 addresses would not cap it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


@dataclass
class HandshakeGate:
    total: int = MAX_HANDSHAKES
    per_source: int = MAX_HANDSHAKES_PER_SOURCE
    _active: Counter[str] = field(default_factory=Counter)
    _count: int = 0

    def enter(self, source: str) -> bool:
        """Take a place for a handshake from `source`; False when a cap is reached."""
        if self._count >= self.total or self._active[source] >= self.per_source:
            return False
        self._active[source] += 1
        self._count += 1
        return True

    def leave(self, source: str) -> None:
        self._count -= 1
        self._active[source] -= 1
        if self._active[source] <= 0:
            del self._active[source]

    @property
    def active(self) -> int:
        return self._count


@dataclass
class RateLimitedLog:
    logger: logging.Logger
    burst: int = 5
    interval: float = 60.0
    _window: dict[str, tuple[float, int]] = field(default_factory=dict)

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        start, seen = self._window.get(key, (now, 0))
        if now - start > self.interval:
            if seen > self.burst:
                self.logger.warning("%s: %d more like this in the last %.0fs were not logged", key,
                                    seen - self.burst, now - start)
            start, seen = now, 0
        seen += 1
        self._window[key] = (start, seen)
        if seen <= self.burst:
            self.logger.warning(msg, *args)
        elif seen == self.burst + 1:
            self.logger.warning("%s: more like this are left out for up to %.0fs", key, self.interval)
