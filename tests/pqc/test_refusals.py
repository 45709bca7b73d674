"""Every refusal has its own error, on both ends: trust, signatures, KEMs, tampering, replay…"""

from __future__ import annotations

import asyncio
import json

import pytest

from qvplan.pqc import (
    BadSignature,
    HostIdentity,
    NoCommonKEM,
    PeerMismatch,
    ProtocolError,
    ReorderedRecord,
    ReplayedRecord,
    SecureChannel,
    TamperedRecord,
    TruncatedStream,
    UntrustedInitiator,
    UntrustedResponder,
    open_channel,
)
from qvplan.pqc.handshake import frame, make_hello
from qvplan.pqc.records import DATA, END, HEADER_LEN, HELLO, KEM_CIPHERTEXT, REFUSAL

from .conftest import Host, Nth, make_host, mitm

pytestmark = pytest.mark.asyncio
IMPORT_HINT = "quantavirt pqc key-import"


async def _drain(ch: SecureChannel) -> int:
    total = 0
    while (data := await ch.recv()) is not None:
        total += len(data)
    return total


async def _send_records(port: int, a: Host, n: int = 4, size: int = 4096) -> None:
    ch = await open_channel("127.0.0.1", port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    for i in range(n):
        await ch.send(bytes([i]) * size)
    await ch.close()


async def test_untrusted_initiator_refused(tmp_path, hosts, responder) -> None:
    _a, b = hosts
    stranger = make_host(tmp_path, "stranger")
    stranger.trusts(b)  # it trusts hv-b, but hv-b does not know it
    server = await responder(_drain)
    with pytest.raises(UntrustedInitiator) as caught:
        await open_channel("127.0.0.1", server.port, identity=stranger.identity, trust=stranger.trust,
                           hello_extra=stranger.extra)
    err = caught.value
    assert f"Migration rejected: untrusted host {stranger.identity.fingerprint}" in str(err)
    assert IMPORT_HINT in str(err)
    # Before the initiator is trusted, the refusal is a reason code only: not who refused.
    assert (err.reason, err.peer_host, err.peer_version, err.peer_fingerprint) == ("untrusted host", None, None, None)
    theirs = await server.outcome()
    assert isinstance(theirs, UntrustedInitiator) and theirs.peer_fingerprint == stranger.identity.fingerprint


async def test_untrusted_responder_refused(tmp_path, hosts, responder) -> None:
    a, _ = hosts
    impostor = make_host(tmp_path, "impostor")
    impostor.trusts(a)  # knows hv-a, but hv-a never imported its key
    server = await responder(_drain, host=impostor)
    with pytest.raises(UntrustedResponder) as caught:
        await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra)
    assert f"untrusted host {impostor.identity.fingerprint}" in str(caught.value)
    assert caught.value.peer_host == "impostor"
    theirs = await server.outcome()  # the initiator told the responder why, before any data
    assert isinstance(theirs, UntrustedResponder) and "hv-a 0.1.0 does not trust" in str(theirs)


async def test_a_trusted_responder_that_is_not_the_one_expected_is_refused(tmp_path, hosts, responder) -> None:
    a, b = hosts
    other = make_host(tmp_path, "hv-c")
    a.trusts(other)
    other.trusts(a)
    server = await responder(_drain, host=other)  # trusted by hv-a, but hv-a means hv-b
    with pytest.raises(PeerMismatch) as caught:
        await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, hello_extra=a.extra,
                           expect=b.identity.fingerprint)
    assert caught.value.code == "peer-mismatch" and "'hv-c'" in caught.value.cause
    theirs = await server.outcome()  # told why, before any data
    assert isinstance(theirs, PeerMismatch)
    good = await responder(_drain)
    ch = await open_channel("127.0.0.1", good.port, identity=a.identity, trust=a.trust, hello_extra=a.extra,
                            expect=b.identity.fingerprint)
    assert ch.peer_fingerprint == b.identity.fingerprint
    await ch.close()


async def test_hello_signed_by_another_key(tmp_path, hosts, responder) -> None:
    a, _ = hosts
    other = HostIdentity.generate()
    # Claims hv-a's (trusted) public key, but signs with another private key.
    forged = HostIdentity(other.provider.new_seed(), public_key=a.identity.public_key)
    server = await responder(_drain)
    with pytest.raises(BadSignature, match="bad signature"):
        await open_channel("127.0.0.1", server.port, identity=forged, trust=a.trust, hello_extra=a.extra)
    theirs = await server.outcome()
    assert isinstance(theirs, BadSignature) and theirs.peer_fingerprint == a.identity.fingerprint


async def test_no_common_kem(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain, allowed_kems=("ML-KEM-768",))
    with pytest.raises(NoCommonKEM, match="no common KEM"):
        await open_channel("127.0.0.1", server.port, identity=a.identity, trust=a.trust, kem="ML-KEM-1024")
    assert isinstance(await server.outcome(), NoCommonKEM)


async def test_offer_of_unknown_kem_gets_a_refusal(hosts, responder) -> None:
    """A (signed, trusted) hello offering only a KEM nobody allows: plaintext refusal, then close."""
    a, _ = hosts
    server = await responder(_drain)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    hello, _ = make_hello(a.identity, "initiator", a.extra, kems=["ML-KEM-512", "X25519"])
    writer.write(frame(HELLO, hello))
    header = await reader.readexactly(HEADER_LEN)
    assert header[0] == REFUSAL
    refusal = json.loads(await reader.readexactly(int.from_bytes(header[1:], "big")))
    assert refusal == {"error": "no common KEM"}  # a reason code, nothing about the host
    assert await reader.read() == b""  # and nothing else
    writer.close()
    assert isinstance(await server.outcome(), NoCommonKEM)


async def test_responder_downgrade_is_refused(hosts, responder) -> None:
    """The responder's hello must pick a KEM the initiator offered: tampering breaks its signature."""
    a, _ = hosts
    server = await responder(_drain)

    def swap_kem(f: bytes) -> bytes:
        n = int.from_bytes(f[HEADER_LEN:HEADER_LEN + 4], "big")
        body, sig = f[HEADER_LEN + 4:HEADER_LEN + 4 + n], f[HEADER_LEN + 4 + n:]
        body = body.replace(b'"kem":"ML-KEM-768"', b'"kem":"ML-KEM-1024"')
        return frame(HELLO, len(body).to_bytes(4, "big") + body + sig)

    async with mitm(server.port, s2c=Nth(HELLO, 1, swap_kem)) as port:
        with pytest.raises(BadSignature):
            await open_channel("127.0.0.1", port, identity=a.identity, trust=a.trust)


async def test_tampered_kem_ciphertext(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)
    flip = Nth(KEM_CIPHERTEXT, 1, lambda f: f[:200] + bytes([f[200] ^ 1]) + f[201:])
    async with mitm(server.port, c2s=flip) as port:
        with pytest.raises((ProtocolError, ConnectionError)):
            await open_channel("127.0.0.1", port, identity=a.identity, trust=a.trust, timeout=5)
    theirs = await server.outcome()
    assert isinstance(theirs, BadSignature) and "key exchange" in str(theirs)


async def test_tampered_ciphertext(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)
    flip = Nth(DATA, 2, lambda f: f[:100] + bytes([f[100] ^ 0x80]) + f[101:])
    async with mitm(server.port, c2s=flip) as port:
        await _send_records(port, a)
    err = await server.outcome()
    assert isinstance(err, TamperedRecord) and "record 2 failed authentication" in str(err)


async def test_replayed_record(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)
    async with mitm(server.port, c2s=Nth(DATA, 2, lambda f: f + f)) as port:
        await _send_records(port, a)
    err = await server.outcome()
    assert isinstance(err, ReplayedRecord) and "replayed record at sequence 3" in str(err)


class Swap:
    """Hold DATA #2 back and send it after DATA #3."""

    def __init__(self) -> None:
        self.seen, self.held = 0, b""

    def __call__(self, rtype: int, f: bytes) -> bytes:
        if rtype != DATA:
            return f
        self.seen += 1
        if self.seen == 2:
            self.held = f
            return b""
        return f + self.held if self.seen == 3 else f


async def test_reordered_record(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)
    async with mitm(server.port, c2s=Swap()) as port:
        await _send_records(port, a)
    err = await server.outcome()
    assert isinstance(err, ReorderedRecord) and "expected sequence 2, got 3" in str(err)


async def test_truncated_stream_without_end_record(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)
    drop_end = Nth(END, 1, lambda f: None)  # close instead of forwarding END
    async with mitm(server.port, c2s=drop_end) as port:
        await _send_records(port, a)
    err = await server.outcome()
    assert isinstance(err, TruncatedStream) and "before end of stream" in str(err)


async def test_truncated_inside_a_record(hosts, responder) -> None:
    a, _ = hosts
    server = await responder(_drain)

    class CutThird:
        seen = 0

        def __call__(self, rtype: int, f: bytes) -> bytes | None:
            if rtype == DATA:
                self.seen += 1
                if self.seen == 3:
                    mangler.cut = True
                    return f[: len(f) // 2]
            return None if getattr(mangler, "cut", False) else f

    mangler = CutThird()
    async with mitm(server.port, c2s=mangler) as port:
        await _send_records(port, a)
    err = await server.outcome()
    assert isinstance(err, TruncatedStream) and "inside a record" in str(err)
