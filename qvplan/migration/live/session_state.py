"""`session-state`: an agent's journal's word on one live session, asked by its peer.

Asked of a destination by the session's source (after a lost confirmation or a restart), the
question is a fence: a session not yet committed is discarded on the spot (journaled before the
answer), so a commit still in flight can never resume it after the source was told "discarded".
A `rebooted` session (reboot.py) asked by its source is `lost`: the source asks only once it
committed.

Asked of a source by the session's destination (restarted after a host crash, reboot.py): the
source's state, no fence needed (a source past `transferring`/`awaiting-commit` never goes back,
and one still there cannot reach that destination's old QEMU any more).

Only the session's peer is answered; anyone else is told `unknown`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...contract import wire
from ...contract.errors import failure
from ...contract.reasons import Reason
from ...pqc import SecureChannel
from ..incoming import INCOMING_MARK
from ..journal import Journal, Record
from . import reboot
from .destination import Incoming, discard

if TYPE_CHECKING:
    from ...host.context import Host


async def handle_session_state(host: Host, journal: Journal, sessions: dict[str, Incoming],
                               channel: SecureChannel, raw: dict[str, Any]) -> None:
    try:
        query = wire.parse(raw, wire.SessionQuery)
        assert isinstance(query, wire.SessionQuery)
    except wire.WireError as err:
        await channel.send_json({"ok": False, **failure(Reason.PROTOCOL_ERROR, str(err)).as_dict()})
        return
    record = journal.get(query.session)
    if record is not None and record.kind == "live" and record.role == "destination" \
            and record.peer == channel.peer_name:
        state = await _as_destination(host, journal, sessions, record)
    elif record is not None and record.kind == "live" and record.role == "source" \
            and record.extra.get("peer_key") == channel.peer_fingerprint:
        state = record.state
    else:
        state = "unknown"
    await channel.send_json(wire.SessionAnswer(state=state, running=state == "running").dump())  # type: ignore[arg-type]


async def _as_destination(host: Host, journal: Journal, sessions: dict[str, Incoming], record: Record) -> str:
    """The destination's state of a session its source asks about, after the fence."""
    if record.state in ("loading", "loaded"):
        journal.set(record.session, "discarded")
        incoming = sessions.get(record.session)
        if incoming is not None:
            incoming.aborted.set()  # its handler removes QEMU and files
        else:
            vm = host.registry.vms.get(record.vm)
            if vm is not None and (vm.dir / INCOMING_MARK).exists():
                await discard(host, vm)
    elif record.state == "rebooted":
        await reboot.conclude(host, journal, record, "committed")
    current = journal.get(record.session)
    return current.state if current is not None else "unknown"
