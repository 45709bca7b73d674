"""Everything that can go wrong on a PQC channel, one class per cause.

All are `PQCError` (a `QVError`): one line "cause — fix" for the operator, plus structured
fields for callers (`quantavirt system ping` shows `peer_version` even when trust fails).
`code` is the stable reason code (the same strings as contract/reasons.py); `reason` is what
the refusal carries on the wire.
A responder that refuses a hello sends the `reason` code in its plaintext refusal; the
initiator maps it back to the same class with `error_for_reason`.
"""

from __future__ import annotations

from ..errors import QVError

IMPORT_FIX = "exchange and import PQC keys between hosts (quantavirt pqc key-import)"


class PQCError(QVError):
    """Root of the channel's errors. `reason` is a short stable code (also sent on the wire)."""

    code = "error"
    reason = "pqc error"

    def __init__(self, cause: str, fix: str | None = None, *, peer_fingerprint: str | None = None,
                 peer_version: str | None = None, peer_host: str | None = None) -> None:
        super().__init__(cause, fix)
        self.peer_fingerprint = peer_fingerprint
        self.peer_version = peer_version
        self.peer_host = peer_host


class UntrustedInitiator(PQCError):
    """The responder does not trust the initiator's identity key."""

    code = "untrusted-host"
    reason = "untrusted host"


class UntrustedResponder(PQCError):
    """The initiator does not trust the responder's identity key."""

    code = "untrusted-host"
    reason = "untrusted host"


class PeerMismatch(PQCError):
    """A trusted host answered, but not the one the channel was opened for (its pinned fingerprint)."""

    code = "peer-mismatch"
    reason = "peer mismatch"


class BadSignature(PQCError):
    """A handshake message is not signed by the identity key it claims."""

    code = "bad-signature"
    reason = "bad signature"


class NoCommonKEM(PQCError):
    """The peers share no KEM (no downgrade to anything either side did not allow)."""

    code = "no-common-kem"
    reason = "no common KEM"


class ProtocolError(PQCError):
    """Malformed or unexpected message, wrong protocol version, key confirmation mismatch."""

    code = "protocol-error"
    reason = "protocol error"


class HandshakeTimeout(PQCError, TimeoutError):
    """The peer did not complete the handshake in time."""

    code = "handshake-timeout"
    reason = "handshake timeout"


class RecordError(PQCError):
    """A record failed after the handshake; the channel is dead."""

    code = "record-error"
    reason = "record error"


class TamperedRecord(RecordError):
    code = "record-error"
    reason = "tampered record"


class ReplayedRecord(RecordError):
    code = "record-error"
    reason = "replayed record"


class ReorderedRecord(RecordError):
    code = "record-error"
    reason = "reordered record"


class TruncatedStream(RecordError):
    code = "connection-reset"
    reason = "truncated stream"


class ChannelClosed(PQCError):
    """Use of a channel after close or after a fatal error."""

    code = "channel-closed"
    reason = "channel closed"


# Codes a responder may send in a refusal, seen from the initiator's side.
_REFUSALS: dict[str, type[PQCError]] = {
    UntrustedInitiator.reason: UntrustedInitiator,
    BadSignature.reason: BadSignature,
    NoCommonKEM.reason: NoCommonKEM,
    ProtocolError.reason: ProtocolError,
    HandshakeTimeout.reason: HandshakeTimeout,
    PeerMismatch.reason: PeerMismatch,
}


def error_for_reason(reason: str) -> type[PQCError]:
    return _REFUSALS.get(reason, PQCError)
