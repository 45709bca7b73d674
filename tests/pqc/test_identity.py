"""Host identity files, key armor, trust store and provider choice."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qvplan.pqc import HostIdentity, KeyFileError, PQCError, TrustStore, fingerprint, get_provider
from qvplan.pqc.identity import TrustError
from qvplan.pqc.keys import PUBLIC, dearmor
from qvplan.pqc.provider import liboqs_present


def test_identity_created_once_private_0600(tmp_path: Path) -> None:
    first = HostIdentity.load_or_create(tmp_path)
    key = tmp_path / "pqc" / "host-identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pqc").stat().st_mode) == 0o700
    assert len(first.public_key) == 1952 and first.fingerprint.startswith("SHA256:")
    again = HostIdentity.load_or_create(tmp_path)
    assert again.public_key == first.public_key and again.fingerprint == first.fingerprint
    assert (tmp_path / "pqc" / "host-identity.pub").read_text() == first.export_public()


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    HostIdentity.load_or_create(tmp_path)
    key = tmp_path / "pqc" / "host-identity.key"
    os.chmod(key, 0o644)
    with pytest.raises(PQCError, match=r"accessible by others .* chmod 600"):
        HostIdentity.load_or_create(tmp_path)


def test_signatures_verify(tmp_path: Path) -> None:
    ident = HostIdentity.load_or_create(tmp_path)
    sig = ident.sign(b"message")
    assert get_provider().verify(ident.public_key, sig, b"message")
    assert not get_provider().verify(ident.public_key, sig, b"other message")


def test_armor_round_trip_and_refusals(tmp_path: Path) -> None:
    ident = HostIdentity.load_or_create(tmp_path)
    text = ident.export_public()
    assert text.splitlines()[0] == "-----BEGIN QVPLAN ML-DSA-65 PUBLIC KEY-----"
    assert dearmor(text, PUBLIC, "x") == ident.public_key
    bad = {
        "": "empty file",
        "ssh-ed25519 AAAA… user@host": "armor",
        text.replace("ML-DSA-65", "ML-DSA-44"): "armor",
        text.replace(text.splitlines()[1], "!!!!"): "not valid base64",
        text.replace(text.splitlines()[1], text.splitlines()[1][:-4]): "not a valid ML-DSA-65 public key",
        (tmp_path / "pqc" / "host-identity.key").read_text(): "is a private key",
    }
    for content, why in bad.items():
        with pytest.raises(KeyFileError, match=why) as caught:
            dearmor(content, PUBLIC, "peer.pub")
        assert "\n" not in str(caught.value)


def test_trust_store(tmp_path: Path) -> None:
    a, b = HostIdentity.generate(), HostIdentity.generate()
    trust = TrustStore(tmp_path)
    assert trust.entries() == [] and trust.find(a.public_key) is None
    assert trust.add("hv-a", a.public_key) == a.fingerprint == fingerprint(a.public_key)
    assert trust.add("hv-a", a.public_key) == a.fingerprint  # same key again: fine
    with pytest.raises(TrustError, match="different key is already trusted as 'hv-a'"):
        trust.add("hv-a", b.public_key)
    with pytest.raises(TrustError, match="already trusted as 'hv-a'"):
        trust.add("other", a.public_key)
    trust.add("hv-a", b.public_key, force=True)
    assert trust.find(b.public_key) == "hv-a" and trust.find(a.public_key) is None
    with pytest.raises(TrustError, match="bad key name"):
        trust.add("../evil", a.public_key)
    with pytest.raises(KeyFileError):
        trust.add("short", b"\x00" * 10)
    (tmp_path / "pqc" / "trusted" / "broken.pub").write_text("garbage")
    assert trust.entries() == [("hv-a", b.fingerprint)]  # a damaged entry trusts nobody


def test_provider_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = get_provider()
    if not liboqs_present():
        assert provider.name.startswith("cryptography (OpenSSL ")
    with pytest.raises(PQCError, match="QUAC 100 Hardware"):
        get_provider("QUAC 100 Hardware")
    with pytest.raises(PQCError, match="unknown PQC provider"):
        get_provider("nonsense")
    assert get_provider("cryptography").name.startswith("cryptography")


def test_kem_round_trip_with_each_kem() -> None:
    provider = get_provider()
    for kem in ("ML-KEM-768", "ML-KEM-1024"):
        private, public = provider.kem_keypair(kem)
        secret, ciphertext = provider.kem_encapsulate(kem, public)
        assert private.decapsulate(ciphertext) == secret and len(secret) == 32
