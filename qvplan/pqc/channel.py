"""The PQC channel over asyncio streams: run the handshake, then carry records.

The channel is a transport that knows nothing of migration (STYLE.md 6). Nothing but handshake
messages crosses the wire before both sides have verified each other's signature and trust and
confirmed the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import random
import socket
from collections.abc import Sequence
from typing import Any

from .errors import (
    IMPORT_FIX,
    ChannelClosed,
    HandshakeTimeout,
    NoCommonKEM,
    PeerMismatch,
    PQCError,
    ProtocolError,
    RecordError,
    UntrustedInitiator,
    UntrustedResponder,
    error_for_reason,
)
from .handshake import (
    PeerHello,
    b64,
    finished_payload,
    frame,
    kem_message,
    make_hello,
    parse_hello,
    parse_kem_message,
    traffic_secrets,
    unb64,
)
from .identity import HostIdentity, TrustStore
from .provider import KEMS, _kem_classes
from .records import (
    DATA,
    END,
    FINISHED,
    HEADER,
    HEADER_LEN,
    HELLO,
    KEM_CIPHERTEXT,
    MAX_PLAIN_FRAME,
    REFUSAL,
    RecordOpener,
    RecordSealer,
)
from .transport import RecordProtocol

DEFAULT_TIMEOUT = 10.0
SOCKET_BUFFER = 4 << 20
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 5, 3  # a dead idle link ends in ~25 s
UNACKED_TIMEOUT_MS = 30_000


class ChannelState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class SecureChannel:
    """An authenticated, encrypted byte-record stream to one peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, role: str,
                 sealer: RecordSealer, opener: RecordOpener, peer: PeerHello, peer_name: str,
                 kem: str, transcript_hash: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.role = role
        self.sealer, self.opener = sealer, opener
        self.peer_fingerprint = peer.fingerprint
        self.peer_public_key = peer.public_key
        self.peer_name = peer_name
        self.peer_hello: dict[str, Any] = peer.summary()
        self.kem = kem
        self.transcript_hash = transcript_hash
        self.state = ChannelState.OPEN
        # From here on, bytes go from the socket straight into the opener's buffer (transport.py);
        # `reader` stays idle.
        self._proto = RecordProtocol.install(reader, writer, opener)

    def __repr__(self) -> str:
        return f"<SecureChannel {self.role} peer={self.peer_name} {self.kem} {self.state.value}>"

    @property
    def protocol(self) -> RecordProtocol:
        """What reads the socket into the opener (transport.py)."""
        return self._proto

    def require_open(self) -> None:
        if self.state is not ChannelState.OPEN:
            raise ChannelClosed(f"PQC channel to {self.peer_name} is {self.state.value}", "open a new channel")

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send `data` (split into records of at most `sealer.max_record` bytes)."""
        self.require_open()
        view = memoryview(data)
        step = self.sealer.max_record
        for i in range(0, len(view), step):
            self.writer.write(self.sealer.seal(view[i:i + step]))
            await self.writer.drain()

    async def recv(self) -> bytes | None:
        """The next record's payload; None once the peer has ended its stream (authenticated)."""
        if self.opener.ended:
            return None
        self.require_open()
        try:
            while True:
                record = self.opener.pull()
                if record is None:
                    if self._proto.eof:
                        self.opener.eof()  # raises: the stream ended without END
                    await self._proto.wait_data()
                    continue
                self._proto.consumed()
                rtype, payload = record
                if rtype == DATA:
                    return payload
                if rtype == END:
                    return None
                raise ProtocolError(f"unexpected record type {rtype:#04x} after the handshake",
                                    "the peer is not speaking qvplan-pqc/1")
        except (RecordError, ProtocolError):
            self.abort()
            raise

    async def send_json(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode()
        if len(data) > self.sealer.max_record:
            raise ValueError(f"JSON message of {len(data)} bytes does not fit one record")
        await self.send(data)

    async def recv_json(self) -> Any:
        data = await self.recv()
        if data is None:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ProtocolError("peer sent a record that is not JSON where a message was expected",
                                "the peer is out of step; retry") from None

    async def end(self) -> None:
        """Send the end-of-stream record (once) but keep receiving (a half-close)."""
        self.require_open()
        if not self.sealer.ended:
            self.writer.write(self.sealer.seal_end())
            await self.writer.drain()

    async def close(self) -> None:
        """Send the end-of-stream record (once) and close the socket."""
        if self.state is ChannelState.OPEN and not self.sealer.ended and not self.writer.is_closing():
            with contextlib.suppress(OSError, ConnectionError):
                await self.end()
        if self.state is ChannelState.OPEN:
            self.state = ChannelState.CLOSED
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.state = ChannelState.FAILED
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


# -- handshake drivers -------------------------------------------------------------------------


async def _read_frame(reader: asyncio.StreamReader, expected: tuple[int, ...]) -> tuple[int, bytes, bytes]:
    """(type, payload, whole frame) of a plaintext handshake message."""
    header = await reader.readexactly(HEADER_LEN)
    rtype, length = HEADER.unpack(header)
    if rtype not in expected or length > MAX_PLAIN_FRAME:
        raise ProtocolError(f"unexpected handshake message (type {rtype:#04x}, {length} bytes)",
                            "the peer is not a quantavirt migration listener speaking qvplan-pqc/1")
    payload = await reader.readexactly(length)
    return rtype, payload, header + payload


async def _read_finished(reader: asyncio.StreamReader, opener: RecordOpener, expected: bytes) -> None:
    header = await reader.readexactly(HEADER_LEN)
    _, length = opener.parse_header(header)
    rtype, payload = opener.open(header, await reader.readexactly(length))
    if rtype != FINISHED or payload != expected:
        raise ProtocolError("key confirmation failed (the peer derived different keys)", "retry; if it persists "
                            "someone is tampering with the handshake")


def _refusal(err: PQCError, extra: dict[str, Any] | None, identity: HostIdentity | None) -> bytes:
    """A plaintext refusal. A responder refuses before the initiator has authenticated: it sends
    only the reason code (no host, version, fingerprint or message), as a TLS 1.3 server reveals
    nothing before the peer is authenticated. The initiator has shown its hello already."""
    if extra is None or identity is None:
        return frame(REFUSAL, json.dumps({"error": err.reason}).encode())
    body = {"error": err.reason, "message": err.cause, "fix": err.fix, "version": extra.get("version"),
            "host": extra.get("host"), "fingerprint": identity.fingerprint, "presented": err.peer_fingerprint}
    return frame(REFUSAL, json.dumps(body).encode())


def _refused(payload: bytes, role: str, identity: HostIdentity) -> PQCError:
    """The error for a refusal the peer sent us."""
    try:
        body = json.loads(payload)
        assert isinstance(body, dict)
    except (ValueError, AssertionError):
        return ProtocolError("the peer refused the handshake with a malformed refusal", "check the peer's log")
    host, version = body.get("host"), body.get("version")
    fields = {"peer_fingerprint": body.get("fingerprint"), "peer_version": version, "peer_host": host}
    who = f"{host} {version}" if host else "the peer"
    if body.get("error") == "untrusted host":
        cls = UntrustedInitiator if role == "initiator" else UntrustedResponder
        return cls(f"Migration rejected: untrusted host {identity.fingerprint} ({who} does not trust this host's key)",
                   IMPORT_FIX, **fields)
    cls = error_for_reason(str(body.get("error")))
    message = body.get("message") or f"refused the handshake ({body.get('error')})"
    return cls(f"Migration rejected by {who}: {message}", body.get("fix") or "see the peer agent's log", **fields)


async def _refuse(writer: asyncio.StreamWriter, err: PQCError, extra: dict[str, Any] | None,
                  identity: HostIdentity | None) -> None:
    """Tell the peer why (best effort), close, and let `err` propagate."""
    with contextlib.suppress(OSError, ConnectionError):
        writer.write(_refusal(err, extra, identity))
        await writer.drain()
    writer.close()
    raise err


def _widen(writer: asyncio.StreamWriter) -> None:
    """Large socket buffers, for an authenticated channel only (an unauthenticated peer must not
    make the host pin megabytes of kernel memory per connection)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)


def _tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A link that dies silently (no FIN, no RST) must still end the channel, or a relay
            # and a destination QEMU would wait on it forever: probe idle links, and give up on
            # data the peer has not acknowledged for a while.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKED_TIMEOUT_MS)


class _Busy(Exception):
    """The responder closed the connection before answering anything: over its handshake caps
    (pqc/gate.py), it closes new connections unread. The initiator tries again until its timeout."""


async def open_channel(host: str, port: int, *, identity: HostIdentity, trust: TrustStore,
                       kem: str | Sequence[str] = "ML-KEM-768", hello_extra: dict[str, Any] | None = None,
                       timeout: float = DEFAULT_TIMEOUT, expect: str | None = None) -> SecureChannel:
    """Connect to a migration listener and run the handshake as initiator. With `expect` (a
    fingerprint) the responder must present that key, not just any trusted one (PeerMismatch)."""
    offers = [kem] if isinstance(kem, str) else list(kem)
    for name in offers:
        _kem_classes(name)  # refuse a name we do not implement before connecting
    extra = dict(hello_extra or {})
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                reader, writer = await asyncio.open_connection(host, port)
                _tune(writer)
                try:
                    channel = await _initiate(reader, writer, identity, trust, offers, extra, expect)
                except _Busy:  # the responder's handshake caps are full (a burst of channels): retry
                    writer.close()
                    writer = None
                    await asyncio.sleep(random.uniform(0.02, 0.2))
                    continue
                _widen(writer)
                return channel
    except TimeoutError:
        if writer is not None:
            writer.close()
        raise HandshakeTimeout(f"PQC handshake timeout: no answer from {host}:{port} within {timeout:g}s",
                               "check 'quantavirt pqc status' and the agent on both hosts") from None
    except (PQCError, OSError, asyncio.IncompleteReadError) as err:
        if writer is not None:
            writer.close()
        if isinstance(err, asyncio.IncompleteReadError):
            raise ProtocolError(f"{host}:{port} closed the connection during the PQC handshake",
                                "check the peer agent's log") from None
        raise


async def _initiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: HostIdentity,
                    trust: TrustStore, offers: list[str], extra: dict[str, Any],
                    expect: str | None = None) -> SecureChannel:
    provider = identity.provider
    hello, _ = make_hello(identity, "initiator", extra, kems=offers)
    f1 = frame(HELLO, hello)
    writer.write(f1)
    try:
        rtype, payload, f2 = await _read_frame(reader, (HELLO, REFUSAL))
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise
        raise _Busy from None
    except ConnectionError:
        raise _Busy from None
    if rtype == REFUSAL:
        raise _refused(payload, "initiator", identity)
    try:
        peer = parse_hello(payload, "responder", provider)
        if peer.body.get("initiator_hello") != hashlib.sha384(f1).hexdigest():
            raise ProtocolError("the responder's hello answers another handshake", "retry; someone may be "
                                "replaying old handshakes")
        name = trust.find(peer.public_key)
        if name is None:
            raise UntrustedResponder(
                f"Migration rejected: untrusted host {peer.fingerprint} ({peer.extra.get('host') or 'the peer'} "
                "is not in this host's trust store)", IMPORT_FIX, peer_fingerprint=peer.fingerprint,
                peer_version=peer.extra.get("version"), peer_host=peer.extra.get("host"))
        if expect is not None and peer.fingerprint != expect:  # trusted, but not the host meant
            raise PeerMismatch(
                f"the responder is trusted as {name!r} ({peer.fingerprint}), not the host this channel was "
                f"opened for ({expect})", "check the address is the host you meant",
                peer_fingerprint=peer.fingerprint, peer_version=peer.extra.get("version"),
                peer_host=peer.extra.get("host"))
        chosen = peer.body.get("kem")
        if chosen not in offers:
            raise NoCommonKEM(f"the responder chose {chosen!r}, which this host did not offer ({', '.join(offers)})",
                              "someone may be trying a downgrade; check the network path",
                              peer_fingerprint=peer.fingerprint)
        secret, ciphertext = provider.kem_encapsulate(chosen, unb64(peer.body.get("kem_public"), "kem_public"))
    except PQCError as err:
        await _refuse(writer, err, extra, identity)
        raise
    except ValueError:
        err = ProtocolError("the responder's ML-KEM public key is malformed", "peer bug or attack")
        await _refuse(writer, err, extra, identity)
        raise err from None
    transcript = hashlib.sha384(f1 + f2)
    f3 = frame(KEM_CIPHERTEXT, kem_message(identity, ciphertext, transcript))
    transcript.update(f3)
    th = transcript.digest()
    i2r, r2i = traffic_secrets(secret, th)
    sealer, opener = RecordSealer(i2r), RecordOpener(r2i)
    writer.write(f3 + sealer.seal(finished_payload("initiator", th), FINISHED))
    await _read_finished(reader, opener, finished_payload("responder", th))
    return SecureChannel(reader, writer, role="initiator", sealer=sealer, opener=opener, peer=peer,
                         peer_name=name, kem=chosen, transcript_hash=th)


async def accept_channel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, identity: HostIdentity,
                         trust: TrustStore, allowed_kems: Sequence[str] = KEMS,
                         hello_extra: dict[str, Any] | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> SecureChannel:
    """Run the handshake as responder on a connection accepted by an asyncio server."""
    extra = dict(hello_extra or {})
    peer_addr = writer.get_extra_info("peername")
    _tune(writer)
    try:
        async with asyncio.timeout(timeout):
            channel = await _respond(reader, writer, identity, trust, tuple(allowed_kems), extra)
        _widen(writer)
        return channel
    except TimeoutError:
        writer.close()
        raise HandshakeTimeout(f"PQC handshake timeout: {peer_addr} did not complete the handshake in {timeout:g}s",
                               "check the source host's agent and the network path") from None
    except asyncio.IncompleteReadError:
        writer.close()
        raise ProtocolError(f"{peer_addr} closed the connection during the PQC handshake",
                            "check the source host") from None


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: HostIdentity,
                   trust: TrustStore, allowed: tuple[str, ...], extra: dict[str, Any]) -> SecureChannel:
    provider = identity.provider
    try:
        _, payload, f1 = await _read_frame(reader, (HELLO,))
        peer = parse_hello(payload, "initiator", provider)
        name = trust.find(peer.public_key)
        if name is None:
            raise UntrustedInitiator(
                f"Migration rejected: untrusted host {peer.fingerprint} ({peer.extra.get('host') or 'the initiator'} "
                "is not in this host's trust store)", IMPORT_FIX, peer_fingerprint=peer.fingerprint,
                peer_version=peer.extra.get("version"), peer_host=peer.extra.get("host"))
        offered = peer.body.get("kems")
        offered = [k for k in offered if isinstance(k, str)] if isinstance(offered, list) else []
        chosen = next((k for k in offered if k in allowed), None)
        if chosen is None:
            raise NoCommonKEM(f"no common KEM: the initiator offered {', '.join(offered) or 'none'}, this host allows "
                              f"{', '.join(allowed)}", f"use --pqc-kem {allowed[0]}" if allowed else None,
                              peer_fingerprint=peer.fingerprint, peer_host=peer.extra.get("host"),
                              peer_version=peer.extra.get("version"))
    except PQCError as err:
        await _refuse(writer, err, None, None)  # the initiator is not authenticated: a reason code only
        raise
    decapsulator, kem_public = provider.kem_keypair(chosen)
    hello, _ = make_hello(identity, "responder", extra, kem=chosen, kem_public=b64(kem_public),
                          initiator_hello=hashlib.sha384(f1).hexdigest())
    f2 = frame(HELLO, hello)
    writer.write(f2)
    rtype, payload, f3 = await _read_frame(reader, (KEM_CIPHERTEXT, REFUSAL))
    if rtype == REFUSAL:
        writer.close()
        raise _refused(payload, "responder", identity)
    transcript = hashlib.sha384(f1 + f2)
    try:
        ciphertext = parse_kem_message(payload, peer, transcript, provider)
        secret = decapsulator.decapsulate(ciphertext)
    except ValueError:
        writer.close()
        raise ProtocolError("malformed ML-KEM ciphertext from the initiator", "peer bug or attack") from None
    except PQCError:
        writer.close()
        raise
    transcript.update(f3)
    th = transcript.digest()
    i2r, r2i = traffic_secrets(secret, th)
    sealer, opener = RecordSealer(r2i), RecordOpener(i2r)
    try:
        await _read_finished(reader, opener, finished_payload("initiator", th))
    except PQCError:
        writer.close()
        raise
    writer.write(sealer.seal(finished_payload("responder", th), FINISHED))
    await writer.drain()
    return SecureChannel(reader, writer, role="responder", sealer=sealer, opener=opener, peer=peer,
                         peer_name=name, kem=chosen, transcript_hash=th)
