"""Talking to the peer agent on :9410: open a PQC channel to it, or ask it one question.

Every failure comes out as a `MigrationError` with its reason code and the real address: a
refused handshake keeps the peer's refusal (e.g. `untrusted-host`) and its fix, a connection that
never opened is `connect-failed` naming the host and port tried.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..addresses import split_hostport
from ..contract.errors import MigrationError, failure
from ..contract.ports import MIGRATION_PORT
from ..contract.reasons import Reason
from ..host.context import Host
from ..pqc import PQCError, SecureChannel, open_channel

ASK_TIMEOUT = 10.0  # seconds for the answer to one question


async def open_peer(host: Host, dest: str, purpose: str, kem: str) -> SecureChannel:
    addr, port = split_hostport(dest, MIGRATION_PORT)
    try:
        return await open_channel(addr, port, identity=host.identity, trust=host.trust, kem=kem,
                                  hello_extra={**host.hello_extra(), "purpose": purpose})
    except PQCError as err:
        raise MigrationError(err.cause, err.fix, code=err.code) from None
    except OSError as err:
        raise failure(Reason.CONNECT_FAILED, f"Connection failed: cannot reach {addr}:{port} "
                      f"({err.strerror or err})", port=port) from None


async def ask(host: Host, dest: str, request: dict[str, Any], kem: str,
              timeout: float = ASK_TIMEOUT) -> dict[str, Any]:
    """One request on a fresh channel, its one answer (an empty dict if the peer closed)."""
    channel = await open_peer(host, dest, str(request.get("op")), kem)
    try:
        await channel.send_json(request)
        reply = await asyncio.wait_for(channel.recv_json(), timeout)
    finally:
        await channel.close()
    return reply if isinstance(reply, dict) else {}


def channel_failure(err: BaseException, dest: str) -> MigrationError:
    """A channel that broke after it opened: `connection-reset`, in the spec's words."""
    if isinstance(err, MigrationError):
        return err
    _, port = split_hostport(dest, MIGRATION_PORT)
    code = getattr(err, "code", None)
    if isinstance(err, PQCError) and code not in (None, "error", "connection-reset", "channel-closed"):
        return MigrationError(f"Connection reset during transfer: {err.cause}", err.fix, code=code)
    return failure(Reason.CONNECTION_RESET, f"Connection reset during transfer: {getattr(err, 'cause', err)}",
                   port=port)
