"""The handshake messages of qvplan-pqc/1 and the keys they lead to.

    initiator                                            responder
    HELLO   {protocol, nonce, identity, kems, extra} + ML-DSA-65 signature  ->
            <-  HELLO {protocol, nonce, identity, kem, kem_public, initiator_hello, extra} + signature
                (or REFUSAL {error, message, version, host, fingerprint} in plaintext, then close)
    KEM_CIPHERTEXT {ciphertext} + signature over hash(HELLO, HELLO, ciphertext)  ->
    FINISHED (encrypted) ->
            <-  FINISHED (encrypted)

The responder's signature covers its ephemeral KEM key and the hash of the initiator's hello;
the initiator's second signature covers both hellos and the ciphertext, so neither side can be
impersonated by replaying old messages. Keys: HKDF-SHA-384 over the ML-KEM shared secret, salted
with the hash of the whole transcript; each FINISHED carries that hash (key confirmation).
This module only builds and checks messages; `channel.py` moves them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadSignature, ProtocolError
from .identity import HostIdentity
from .keys import fingerprint
from .provider import Provider
from .records import HEADER, SECRET_LEN

PROTOCOL = "qvplan-pqc/1"
_LABEL_HELLO = {"initiator": b"qvplan-pqc/1 initiator hello\0", "responder": b"qvplan-pqc/1 responder hello\0"}
_LABEL_KEM = b"qvplan-pqc/1 initiator kem\0"
_LEN = struct.Struct(">I")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"malformed handshake: {what} is not base64", "the peer is not speaking qvplan-pqc/1") \
            from None


def frame(rtype: int, payload: bytes) -> bytes:
    return HEADER.pack(rtype, len(payload)) + payload


def signed(label: bytes, body: bytes, identity: HostIdentity) -> bytes:
    """length-prefixed body + ML-DSA-65 signature over label + body."""
    return _LEN.pack(len(body)) + body + identity.sign(label + body)


def split_signed(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) < 4 or len(payload) < 4 + _LEN.unpack_from(payload)[0]:
        raise ProtocolError("malformed handshake message (bad length)", "the peer is not speaking qvplan-pqc/1")
    n = _LEN.unpack_from(payload)[0]
    return payload[4:4 + n], payload[4 + n:]


@dataclass
class PeerHello:
    """A verified hello: who the peer is and what it said."""

    body: dict[str, Any]
    public_key: bytes
    fingerprint: str

    @property
    def extra(self) -> dict[str, Any]:
        extra = self.body.get("extra")
        return extra if isinstance(extra, dict) else {}

    def summary(self) -> dict[str, Any]:
        """What `SecureChannel.peer_hello` shows: the extra fields plus the protocol's."""
        out = dict(self.extra)
        out.update({k: v for k, v in self.body.items() if k in ("protocol", "role", "kems", "kem")})
        out["fingerprint"] = self.fingerprint
        return out


def make_hello(identity: HostIdentity, role: str, extra: dict[str, Any], **fields: Any) -> tuple[bytes, bytes]:
    """(signed payload, nonce) of a hello from `role`."""
    nonce = os.urandom(32)
    body = {"protocol": PROTOCOL, "role": role, "nonce": b64(nonce), "identity": b64(identity.public_key),
            **fields, "extra": extra}
    return signed(_LABEL_HELLO[role], json.dumps(body, separators=(",", ":")).encode(), identity), nonce


def parse_hello(payload: bytes, role: str, provider: Provider) -> PeerHello:
    """Decode a hello claimed by `role` and check its signature against the key it carries."""
    raw, signature = split_signed(payload)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("malformed hello (not JSON)", "the peer is not speaking qvplan-pqc/1") from None
    if not isinstance(body, dict) or body.get("role") != role:
        raise ProtocolError(f"malformed hello (expected a {role} hello)", "the peer is not speaking qvplan-pqc/1")
    if body.get("protocol") != PROTOCOL:
        raise ProtocolError(f"unsupported protocol {body.get('protocol')!r} (this host speaks {PROTOCOL})",
                            "run the same major version of quantavirt on both hosts")
    public = unb64(body.get("identity"), "identity")
    fp = fingerprint(public)
    try:
        provider.check_public(public)
    except ValueError:
        raise BadSignature(f"hello carries a malformed ML-DSA-65 identity key ({fp})", "peer bug or attack",
                           peer_fingerprint=fp) from None
    if not provider.verify(public, signature, _LABEL_HELLO[role] + raw):
        raise BadSignature(f"bad signature: the {role} hello is not signed by the identity key it presents ({fp})",
                           "the peer's key files are inconsistent, or someone is impersonating it",
                           peer_fingerprint=fp, peer_host=_str(body, "host"), peer_version=_str(body, "version"))
    unb64(body.get("nonce"), "nonce")
    return PeerHello(body, public, fp)


def _str(body: dict[str, Any], key: str) -> str | None:
    extra = body.get("extra")
    value = extra.get(key) if isinstance(extra, dict) else None
    return str(value) if value is not None else None


def kem_message(identity: HostIdentity, ciphertext: bytes, transcript: hashlib._Hash) -> bytes:
    """The initiator's ciphertext, signed together with the transcript so far."""
    t = transcript.copy()
    t.update(ciphertext)
    return _LEN.pack(len(ciphertext)) + ciphertext + identity.sign(_LABEL_KEM + t.digest())


def parse_kem_message(payload: bytes, peer: PeerHello, transcript: hashlib._Hash, provider: Provider) -> bytes:
    ciphertext, signature = split_signed(payload)
    t = transcript.copy()
    t.update(ciphertext)
    if not provider.verify(peer.public_key, signature, _LABEL_KEM + t.digest()):
        raise BadSignature(f"bad signature on the key exchange from {peer.fingerprint}",
                           "someone is tampering with the handshake", peer_fingerprint=peer.fingerprint)
    return ciphertext


def traffic_secrets(shared_secret: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
    """(initiator→responder, responder→initiator) traffic secrets."""
    okm = HKDF(hashes.SHA384(), 2 * SECRET_LEN, salt=transcript_hash,
               info=b"qvplan-pqc/1 traffic secrets").derive(shared_secret)
    return okm[:SECRET_LEN], okm[SECRET_LEN:]


def finished_payload(role: str, transcript_hash: bytes) -> bytes:
    return f"{PROTOCOL} finished {role}\0".encode() + transcript_hash
