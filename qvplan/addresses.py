"""`HOST:PORT` parsing, in one place for configs, CLIs and inventories."""

from __future__ import annotations


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """`10.0.0.1:9410` → ("10.0.0.1", 9410); `[::1]:9410` too; a bare host gets `default_port`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.endswith("]")):
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return text.strip("[]"), default_port
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} out of range")
    return host.strip("[]"), int(port)
