"""The control messages of a migration, typed, as both agents send and read them on :9410.

Live migration, on the control channel (source → destination unless marked ←):
  MigrateRequest                 ← SetupReply (ok, or a refusal with {error, fix, code})
  ← Received                     QEMU loaded everything and waits paused
  Commit                         ← Running once the guest resumed there
                                 (after Received, or — to a destination whose SetupReply said
                                 commit_ahead — as soon as the source's QEMU sent everything)
  Abort (or EOF before Commit)   ← Discarded once nothing is left there
  ← Failed                       the destination gave up (a refusal's {error, fix, code})
On a fresh channel, from either side: SessionQuery → SessionAnswer (the journal's word on a
session, asked by the source after commit, or by a destination restarted after a host crash; see
docs/exactly-once.md). Offline: OfflineStateQuery → OfflineStateAnswer.

`parse()` turns a received dict into its message (or raises `WireError`): no side reads bare dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class WireError(ValueError):
    """A message that is not one of ours (hostile or broken peer)."""


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class MigrateRequest(Message):
    op: Literal["migrate"] = "migrate"
    session: str
    version: str | None = None
    vm: dict[str, Any]
    flags: dict[str, Any]
    policies: dict[str, Any] = {}
    cpu: Any = None
    disks: list[dict[str, Any]] = []
    storage: list[dict[str, Any]] | None = None
    # the source's QEMU may lose writes: digest the loaded RAM under this 256-bit key, in hex
    # (live/ramcheck.py); None: no digest
    ram_key: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # where the destination reaches the source's migration listener (HOST:PORT), to ask it about
    # the session after a host crash (live/reboot.py); None from older sources
    source: str | None = Field(None, max_length=300)


class SetupReply(Message):
    ok: bool
    exports: list[str] | None = None  # with --storage-migrate: the NBD export of each disk, in disk order
    # the destination takes a Commit that comes before its Received (older ones take it after only)
    commit_ahead: bool = False
    error: str | None = None
    fix: str | None = None
    code: str | None = None


class Received(Message):
    event: Literal["received"] = "received"
    ram_digest: str | None = None  # when the request asked for ram_check


class Commit(Message):
    cmd: Literal["commit"] = "commit"


class Running(Message):
    event: Literal["running"] = "running"
    resumed_at: float | None = None
    host: str | None = None


class Abort(Message):
    cmd: Literal["abort"] = "abort"


class Discarded(Message):
    event: Literal["discarded"] = "discarded"


class Failed(Message):
    event: Literal["failed"] = "failed"
    error: str
    fix: str | None = None
    code: str | None = None


# An agent's word on a session, from its journal. As its destination:
#   unknown (no record), loading, loaded (never resumed: the source's copy is the guest),
#   committing (resuming: the guest may run there), running, discarded, lost (QEMU died after commit).
# As its source (asked by a destination that restarted after a host crash, live/reboot.py):
#   transferring, awaiting-commit, rolled-back (no commit ever left), committed, released.
SessionState = Literal["unknown", "loading", "loaded", "committing", "running", "discarded", "lost",
                       "transferring", "awaiting-commit", "committed", "released", "rolled-back"]


class SessionQuery(Message):
    op: Literal["session-state"] = "session-state"
    session: str
    vm: str = ""


class SessionAnswer(Message):
    ok: bool = True
    state: SessionState
    running: bool = False  # kept for older sources: true only in "running"


class OfflineStateQuery(Message):
    op: Literal["offline-state"] = "offline-state"
    vm: str
    session: str


class OfflineStateAnswer(Message):
    ok: bool = True
    state: Literal["committed", "pending", "absent"]


_BY_EVENT: dict[str, type[Message]] = {"received": Received, "running": Running, "discarded": Discarded,
                                       "failed": Failed}
_BY_CMD: dict[str, type[Message]] = {"commit": Commit, "abort": Abort}


def parse(raw: Any, *expected: type[Message]) -> Message:
    """The message `raw` is (one of `expected` when given); raises WireError otherwise.

    Events and commands are told apart by their `event`/`cmd` field; other messages need `expected`."""
    if not isinstance(raw, dict):
        raise WireError(f"not a message: {raw!r:.80}")
    kinds: list[type[Message]] = list(expected)
    if not kinds:
        kind = _BY_EVENT.get(str(raw.get("event"))) or _BY_CMD.get(str(raw.get("cmd")))
        if kind is None:
            raise WireError(f"unknown message {raw!r:.80}")
        kinds = [kind]
    elif "event" in raw or "cmd" in raw:
        kind = _BY_EVENT.get(str(raw.get("event"))) or _BY_CMD.get(str(raw.get("cmd")))
        kinds = [k for k in kinds if k is kind] or kinds
    errors = []
    for kind in kinds:
        try:
            return kind.model_validate(raw)
        except ValidationError as err:
            errors.append(f"{kind.__name__}: {err.errors()[0]['msg']}")
    raise WireError(f"unexpected message {raw!r:.80} ({'; '.join(errors)})")
