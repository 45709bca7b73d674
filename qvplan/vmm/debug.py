"""Poke guest memory through QEMU's gdbstub: for tests that must corrupt a guest on purpose.

QMP can read RAM (`pmemsave`) but not write it. The HMP command `gdbserver` opens QEMU's GDB
stub on a Unix socket in the run dir; the GDB remote protocol's `M addr,len:hex` packet writes.
Addresses are the vCPU's virtual addresses; the test guest runs flat protected mode without
paging, so they equal guest-physical ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .errors import QemuError

if TYPE_CHECKING:
    from .process import QemuProcess

TIMEOUT = 10.0


class GdbStub:
    """A minimal GDB remote protocol client (acknowledged mode, one request at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, payload: str) -> str:
        body = payload.encode()
        self.writer.write(b"$" + body + b"#" + f"{sum(body) % 256:02x}".encode())
        await self.writer.drain()
        return await asyncio.wait_for(self._reply(), TIMEOUT)

    async def _reply(self) -> str:
        while True:  # skip acks ('+') and anything before the packet start
            if (await self.reader.readexactly(1)) == b"$":
                break
        body = (await self.reader.readuntil(b"#"))[:-1]
        await self.reader.readexactly(2)  # checksum; the transport is a local socket
        self.writer.write(b"+")
        await self.writer.drain()
        return body.decode()

    async def write_memory(self, address: int, data: bytes) -> None:
        reply = await self.request(f"M{address:x},{len(data):x}:{data.hex()}")
        if reply != "OK":
            raise QemuError(f"gdbstub refused to write {len(data)} bytes at 0x{address:x}: {reply}")

    async def read_memory(self, address: int, length: int) -> bytes:
        reply = await self.request(f"m{address:x},{length:x}")
        if reply.startswith("E") and len(reply) == 3:
            raise QemuError(f"gdbstub cannot read {length} bytes at 0x{address:x}: {reply}")
        return bytes.fromhex(reply)


@contextlib.asynccontextmanager
async def gdbstub(proc: QemuProcess) -> AsyncIterator[GdbStub]:
    """Pause the VM, open its gdbstub, yield a client; then close it and resume if it was running."""
    running = bool((await proc.execute("query-status")).get("running"))
    if running:
        await proc.execute("stop")
    sock = proc.run_dir / "gdb.sock"
    sock.unlink(missing_ok=True)
    out = await proc.execute("human-monitor-command",
                             {"command-line": f"gdbserver unix:{proc.qemu_path(sock)},server=on,wait=off"})
    if "Waiting for gdb" not in out:
        raise QemuError(f"cannot open the gdbstub: {out.strip()}")
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(sock)), TIMEOUT)
        yield GdbStub(reader, writer)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # Closing the connection leaves the VM paused (no detach, which would resume it).
        await proc.execute("human-monitor-command", {"command-line": "gdbserver none"})
        sock.unlink(missing_ok=True)
        if running:
            await proc.execute("cont")


async def write_guest_memory(proc: QemuProcess, address: int, data: bytes) -> None:
    """Write `data` at guest address `address`, with the VM paused around the write."""
    async with gdbstub(proc) as gdb:
        await gdb.write_memory(address, data)


async def read_guest_memory(proc: QemuProcess, address: int, length: int) -> bytes:
    async with gdbstub(proc) as gdb:
        return await gdb.read_memory(address, length)
