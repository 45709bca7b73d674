"""Every stable reason code a refusal or failure can carry, with the spec's fix for it.

Codes are raised where the cause is known and travel unchanged: PQC refusals, the destination's
answers, the HTTP API (`code`), the CLI's `--json`, apply's journal and JUnit. `pqc/` cannot import
this package (it imports nothing of the project), so its errors spell the same strings; a test
holds the two lists together.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # phase 1: the destination's (and the plan's) prerequisites
    UNTRUSTED_HOST = "untrusted-host"
    CPU_INCOMPATIBLE = "cpu-incompatible"
    VERSION_MISMATCH = "version-mismatch"
    STORAGE_NOT_FOUND = "storage-not-found"
    NETWORK_NOT_FOUND = "network-not-found"
    MACHINE_UNSUPPORTED = "machine-unsupported"
    OUT_OF_RESOURCES = "out-of-resources"
    PQC_REQUIRED = "pqc-required"
    NAME_CLASH = "name-clash"
    SAME_HOST = "same-host"
    VM_STATE = "vm-state"
    # the channel
    CONNECT_FAILED = "connect-failed"
    CONNECTION_RESET = "connection-reset"
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    BAD_SIGNATURE = "bad-signature"
    NO_COMMON_KEM = "no-common-kem"
    PROTOCOL_ERROR = "protocol-error"
    RECORD_ERROR = "record-error"
    CHANNEL_CLOSED = "channel-closed"
    # the migration's course
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    NOT_CONVERGING = "not-converging"
    DESTINATION_FAILED = "destination-failed"
    QEMU_FAILED = "qemu-failed"
    IN_DOUBT = "in-doubt"  # paused on the source: the destination may run it, unreachable to ask
    QEMU_LOST = "qemu-lost"  # a destination session whose QEMU died after commit: nothing to resume there
    STORAGE_FAILED = "storage-failed"
    # confinement: what a local user or a trusted peer may not make the agent do
    PATH_OUTSIDE_POOLS = "path-outside-pools"  # a path outside the pools and shared roots, or through a symlink
    PEER_MISMATCH = "peer-mismatch"  # a trusted host answered, but not the one meant (or not the session's)
    RAM_MISMATCH = "ram-mismatch"  # the loaded copy's RAM differs from the source's: not committed
    # apply and the API
    STALE = "stale"
    OTHER_HOSTS = "plan-for-other-hosts"
    UNKNOWN_VM = "unknown-vm"
    NO_MIGRATION = "no-migration"  # the API knows no migration of that VM
    BAD_REQUEST = "bad-request"
    AGENT_UNREACHABLE = "agent-unreachable"
    # who may steer a host (issue 12): the control socket and the read-only TCP API
    READ_ONLY_API = "read-only-api"  # a change asked of the TCP API: it only reads
    FORBIDDEN = "forbidden"  # a caller the control socket (or the TCP API's Host/Origin rule) does not admit
    MONITOR_DISABLED = "monitor-disabled"  # HMP passthrough: root only, and only with [api] allow_monitor
    KEY_CHANGED = "key-changed"  # a peer's key differs from the one trusted or planned: never overwritten
    ERROR = "error"


PORT_FIX = "check port {port} is open, verify the network route, retry"

FIXES: dict[Reason, str] = {
    Reason.UNTRUSTED_HOST: "exchange and import PQC keys between hosts (quantavirt pqc key-import)",
    Reason.CPU_INCOMPATIBLE: 'use cpu.model with explicit feature flags, not "host"',
    Reason.VERSION_MISMATCH: "run the same QuantaVirt major version on both hosts",
    Reason.STORAGE_NOT_FOUND: "run `quantavirt system storage-check`, verify the NFS/Ceph mount on the destination",
    Reason.OUT_OF_RESOURCES: "free memory on the destination or pick another host",
    Reason.NOT_CONVERGING: "enable auto-converge, increase bandwidth, or reduce VM write load",
    Reason.HANDSHAKE_TIMEOUT: "check `quantavirt pqc status` on both hosts, verify firmware",
    Reason.READ_ONLY_API: "send changes to the control socket ([api] socket): the quantavirt CLI or qvplan over SSH",
    Reason.PATH_OUTSIDE_POOLS: "put the file in one of the host's [storage] pools or shared roots",
    Reason.PEER_MISMATCH: "check --dest is the host you meant and that its key is the one trusted under its name",
}


def fix_for(reason: Reason | str, port: int | None = None) -> str | None:
    """The spec's resolution for a reason (port-aware for the network ones)."""
    if reason in (Reason.CONNECTION_RESET, Reason.CONNECT_FAILED) and port is not None:
        return PORT_FIX.format(port=port)
    return FIXES.get(Reason(reason)) if reason in Reason._value2member_map_ else None
