"""What a migration says about itself, typed once for the agent, the CLI, apply and SSE clients:
the spec's five phases, the outcome states, and the kinds of event on `…/migrate/events`."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Phase(IntEnum):
    """The spec's migration phases."""

    SETUP = 1
    INITIAL_TRANSFER = 2
    ITERATIVE_COPY = 3
    STOP_AND_COPY = 4
    ACTIVATION = 5


PHASE_NAMES: dict[int, str] = {
    Phase.SETUP: "setup",
    Phase.INITIAL_TRANSFER: "initial transfer",
    Phase.ITERATIVE_COPY: "iterative dirty copy",
    Phase.STOP_AND_COPY: "stop-and-copy",
    Phase.ACTIVATION: "activation",
}
OFFLINE_PHASE_NAMES: dict[int, str] = {Phase.SETUP: "setup", Phase.INITIAL_TRANSFER: "disk copy",
                                        Phase.ACTIVATION: "commit"}


class State(StrEnum):
    """A migration's `state` in its status."""

    MIGRATING = "MIGRATING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Event(StrEnum):
    """The `event` of each message on a migration's event stream."""

    STATUS = "status"  # the first message: the status as it stands
    PHASE = "phase"
    PASS = "pass"  # one QEMU pass over guest memory
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


OUTCOMES = frozenset({Event.COMPLETED, Event.FAILED, Event.CANCELLED})  # the stream ends after one


class Inbound(StrEnum):
    """What a destination publishes on the VM's topic about a migration coming in (metrics count them)."""

    STARTED = "incoming-started"  # accepted: the destination prepares its side
    REFUSED = "incoming-refused"  # refused or failed before landing, with `code`
    LANDED = "migrated-in"  # the guest runs (or, offline, is defined) here
