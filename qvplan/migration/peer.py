"""Talking to the peer agent on :9410: open a PQC channel to it, or ask it one question.

Every failure comes out as a `MigrationError` with its reason code and the real address: a
refused handshake keeps the peer's refusal (e.g. `untrusted-host`) and its fix, a connection that
never opened is `connect-failed` naming the host and port tried.

Pinned peers: being trusted is not enough, the peer must be the host meant. A control channel
expects the trust entry `meant()` names; every later channel of the session expects the
fingerprint its control channel presented (`pin`). Anything else is `peer-mismatch`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..addresses import split_hostport
from ..contract.errors import MigrationError, failure
from ..contract.ports import MIGRATION_PORT
from ..contract.reasons import FIXES, Reason
from ..host.context import Host
from ..pqc import PeerMismatch, PQCError, SecureChannel, open_channel

ASK_TIMEOUT = 10.0  # seconds for the answer to one question


def meant(host: Host, dest: str, dest_host: str | None = None) -> tuple[str, str] | None:
    """(name, fingerprint) of the trust entry the peer at `dest` must be: the entry `dest_host`
    names (the migrate request's `dest_host`), else the entry named like `dest`'s host part
    (`--dest hv-b:9410`); None when neither says (then any trusted key answers)."""
    entries = dict(host.trust.entries())
    if dest_host is not None:
        if dest_host not in entries:
            raise failure(Reason.UNTRUSTED_HOST, f"Migration rejected: no key is trusted as {dest_host!r} here",
                          "import the destination's key under that name (quantavirt pqc key-import)")
        return dest_host, entries[dest_host]
    name = split_hostport(dest, MIGRATION_PORT)[0]
    return (name, entries[name]) if name in entries else None


async def open_peer(host: Host, dest: str, purpose: str, kem: str, *, dest_host: str | None = None,
                    pin: str | None = None) -> SecureChannel:
    """An authenticated channel to `dest`. The peer must present `pin` (a fingerprint) when given,
    else the key of the trust entry `meant()` finds; a trusted key that is not it is refused
    (`peer-mismatch`) before anything but the handshake crosses."""
    addr, port = split_hostport(dest, MIGRATION_PORT)
    expected = meant(host, dest, dest_host) if pin is None else None
    expect = pin if pin is not None else (expected[1] if expected else None)
    try:
        return await open_channel(addr, port, identity=host.identity, trust=host.trust, kem=kem,
                                  hello_extra={**host.hello_extra(), "purpose": purpose}, expect=expect)
    except PeerMismatch as err:
        which = f"{expected[0]!r} ({expect})" if expected else f"this session's destination ({expect})"
        raise MigrationError(f"Migration rejected: {addr}:{port} is not {which}: {err.cause}",
                             FIXES[Reason.PEER_MISMATCH], code=Reason.PEER_MISMATCH) from None
    except PQCError as err:
        raise MigrationError(err.cause, err.fix, code=err.code) from None
    except OSError as err:
        raise failure(Reason.CONNECT_FAILED, f"Connection failed: cannot reach {addr}:{port} "
                      f"({err.strerror or err})", port=port) from None


async def ask(host: Host, dest: str, request: dict[str, Any], kem: str,
              timeout: float = ASK_TIMEOUT, pin: str | None = None) -> dict[str, Any]:
    """One request on a fresh channel, its one answer (an empty dict if the peer closed). `pin`:
    the key the session's peer presented (recovery asks that host, not whoever answers now)."""
    channel = await open_peer(host, dest, str(request.get("op")), kem, pin=pin)
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
