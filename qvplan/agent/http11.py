"""One HTTP/1.1 request per connection, blocking, on a plain socket: the agent client's wire.

Just what the agent's API needs (JSON bodies, `Content-Length` or chunked answers, a server-sent
event stream read line by line), and no more: `http.client` would cost a host command as much
start time as all of click. TLS, redirects, keep-alive and proxies do not apply to a loopback
API or a forwarded Unix socket.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import BinaryIO

MAX_HEAD = 64 * 1024  # a status line and headers longer than this are not the agent's


class WireError(OSError):
    """The peer's answer is not HTTP as the agent speaks it (or it stopped mid-answer)."""


class Response:
    """An answer: its status, headers (lower-case names) and a body read once, whole or by lines."""

    def __init__(self, sock: socket.socket, stream: BinaryIO) -> None:
        self._sock = sock
        self._stream = stream
        self.status, self.headers = _read_head(stream)
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left = int(length) if length is not None and not self._chunked else None

    def close(self) -> None:
        self._stream.close()
        self._sock.close()

    def read(self) -> bytes:
        if self._chunked:
            return b"".join(self._chunks())
        if self._left is not None:
            data = self._stream.read(self._left)
            if len(data) < self._left:
                raise WireError("the answer ended early")
            return data
        return self._stream.read()

    def lines(self) -> Iterator[bytes]:
        """The body line by line (each with its line end), as it arrives."""
        if not self._chunked:
            yield from iter(self._stream.readline, b"")
            return
        pending = b""
        for chunk in self._chunks():
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                yield line + b"\n"
        if pending:
            yield pending

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self._stream.readline(MAX_HEAD)
            if not size_line.endswith(b"\n"):
                raise WireError("the answer ended inside a chunk header")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise WireError(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                while self._stream.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            data = self._stream.read(size)
            if len(data) < size or self._stream.readline(MAX_HEAD) not in (b"\r\n", b"\n"):
                raise WireError("the answer ended inside a chunk")
            yield data


def _read_head(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    status_line = stream.readline(MAX_HEAD)
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise WireError("no HTTP answer" if not status_line else f"not an HTTP answer: {status_line[:40]!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    while (line := stream.readline(MAX_HEAD)) not in (b"\r\n", b"\n"):
        size += len(line)
        if not line or size > MAX_HEAD:
            raise WireError("the answer's headers ended early or are too long")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def exchange(address: tuple[str, int] | str, method: str, path: str, body: bytes | None,
             timeout: float | None) -> Response:
    """Send one request to a TCP (host, port) or a Unix socket path; the answer's head is read.

    The caller reads the body and closes the response. Socket errors are raised as they are.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        host = "localhost"
    else:
        sock = socket.create_connection(address, timeout=timeout)
        host = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", "Accept: */*"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return Response(sock, sock.makefile("rb"))
    except BaseException:
        sock.close()
        raise
