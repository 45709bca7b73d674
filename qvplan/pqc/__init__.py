"""The PQC migration channel: ML-DSA-65 host identities, ML-KEM key exchange, AES-256-GCM records.

A transport that knows nothing of migration: `open_channel` (initiator) and `accept_channel`
(responder) return a `SecureChannel` once both hosts have authenticated each other.
"""

from .channel import ChannelState, SecureChannel, accept_channel, open_channel
from .errors import (
    BadSignature,
    ChannelClosed,
    HandshakeTimeout,
    NoCommonKEM,
    PeerMismatch,
    PQCError,
    ProtocolError,
    RecordError,
    ReorderedRecord,
    ReplayedRecord,
    TamperedRecord,
    TruncatedStream,
    UntrustedInitiator,
    UntrustedResponder,
)
from .identity import HostIdentity, TrustStore
from .keys import KeyFileError, fingerprint
from .provider import KEMS, Provider, get_provider
from .records import RecordOpener, RecordSealer

__all__ = [
    "KEMS",
    "BadSignature",
    "ChannelClosed",
    "ChannelState",
    "HandshakeTimeout",
    "HostIdentity",
    "KeyFileError",
    "NoCommonKEM",
    "PQCError",
    "PeerMismatch",
    "ProtocolError",
    "Provider",
    "RecordError",
    "RecordOpener",
    "RecordSealer",
    "ReorderedRecord",
    "ReplayedRecord",
    "SecureChannel",
    "TamperedRecord",
    "TruncatedStream",
    "TrustStore",
    "UntrustedInitiator",
    "UntrustedResponder",
    "accept_channel",
    "fingerprint",
    "get_provider",
    "open_channel",
]
