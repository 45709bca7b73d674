"""Receive records without copying through a StreamReader.

After the handshake the channel swaps the connection's protocol for `RecordProtocol`, a
`BufferedProtocol` whose `get_buffer` is the opener's own buffer: the kernel copies bytes
straight where they are decrypted from (StreamReader would copy each byte three more times).
Writing still goes through the original `StreamWriter`: this protocol forwards the write
flow-control and connection-lost callbacks to the StreamReaderProtocol it replaced, so
`writer.drain()` and `writer.wait_closed()` keep working.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .records import RecordOpener

PAUSE_ABOVE = 16 << 20  # stop reading from the socket while this much is buffered, undecrypted
RESUME_BELOW = 4 << 20


class RecordProtocol(asyncio.BufferedProtocol):
    def __init__(self, opener: RecordOpener, inner: Any, transport: asyncio.BaseTransport) -> None:
        self.opener = opener
        self.inner = inner  # the StreamReaderProtocol that was there before
        self.transport = transport
        self.eof = False
        self.lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._detached = False  # a worker thread reads the socket itself (bulk.py)

    @classmethod
    def install(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                opener: RecordOpener) -> RecordProtocol:
        """Take over the connection's reads; bytes the StreamReader already holds move to the opener."""
        transport = writer.transport
        proto = cls(opener, transport.get_protocol(), transport)
        leftover = reader._buffer  # asyncio has no public way to take these bytes
        if leftover:
            opener.feed(leftover)
            leftover.clear()
        proto.eof = reader.at_eof() or transport.is_closing()
        transport.set_protocol(proto)
        return proto

    # -- asyncio callbacks -----------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.opener.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.opener.buffer_updated(nbytes)
        if self.opener.pending > PAUSE_ABOVE and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the connection open for writing; the channel closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- for the channel -------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_data(self) -> None:
        """Until more bytes (or EOF) arrive."""
        if self.eof:
            return
        if self._reading_paused:
            self._resume()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def consumed(self) -> None:
        """The channel pulled records; read from the socket again once the backlog is small."""
        if self._reading_paused and self.opener.pending < RESUME_BELOW:
            self._resume()

    def detach(self) -> None:
        """Stop reading the socket: a worker thread reads it, into the same opener, until `attach`."""
        self._detached = True
        if not self._reading_paused and not self.transport.is_closing():
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def attach(self, eof: bool) -> None:
        """Read the socket again (or not, after `eof`: the worker thread saw the stream end)."""
        self._detached = False
        self.eof = self.eof or eof
        if not eof and not self._reading_paused and not self.transport.is_closing():
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def _resume(self) -> None:
        self._reading_paused = False
        if not self._detached and not self.transport.is_closing():
            self.transport.resume_reading()  # type: ignore[attr-defined]
