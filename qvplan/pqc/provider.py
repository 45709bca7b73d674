"""Who does the post-quantum math: ML-DSA-65 signatures and ML-KEM-768/1024.

`cryptography` (OpenSSL) is the default. liboqs-python is used for the KEMs and for verifying
when a liboqs shared library is installed; it is detected with `ctypes.util.find_library`
first, because importing `oqs` without one makes it try to download and build liboqs.
Identity keys are stored as the 32-byte FIPS 204 seed, which every provider signs with through
OpenSSL, so a host keeps its identity whichever provider is active. "QUAC 100 Hardware" is a
provider name reserved for the accelerator card; it is not implemented.

Signatures use the empty ML-DSA context: callers put their own domain label into the message,
so providers that lack context strings still interoperate.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from .errors import PQCError

SIG_ALG = "ML-DSA-65"
KEMS = ("ML-KEM-768", "ML-KEM-1024")
QUAC = "QUAC 100 Hardware"

_KEM_CLASSES: dict[str, Any] = {
    "ML-KEM-768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    "ML-KEM-1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


class KemDecapsulator(Protocol):
    def decapsulate(self, ciphertext: bytes) -> bytes: ...


class Provider:
    """The interface every provider implements. Raw key bytes in and out, no provider objects leak."""

    name: str = "abstract"

    def new_seed(self) -> bytes:
        return os.urandom(32)

    def signer(self, seed: bytes) -> tuple[Signer, bytes]:
        """A signer for an identity seed and its raw ML-DSA-65 public key."""
        key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        return _MLDSASigner(key), key.public_key().public_bytes_raw()

    def check_public(self, public: bytes) -> None:
        """Raise ValueError unless `public` is a well-formed ML-DSA-65 public key."""
        mldsa.MLDSA65PublicKey.from_public_bytes(public)

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        raise NotImplementedError

    def kem_keypair(self, kem: str) -> tuple[KemDecapsulator, bytes]:
        raise NotImplementedError

    def kem_encapsulate(self, kem: str, public: bytes) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext)."""
        raise NotImplementedError


class _MLDSASigner:
    def __init__(self, key: mldsa.MLDSA65PrivateKey) -> None:
        self._key = key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class CryptographyProvider(Provider):
    def __init__(self) -> None:
        from cryptography.hazmat.backends.openssl.backend import backend

        # "OpenSSL 4.0.3 29 Sep 2026" -> "OpenSSL 4.0.3"
        self.name = "cryptography (" + " ".join(backend.openssl_version_text().split()[:2]) + ")"

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def kem_keypair(self, kem: str) -> tuple[KemDecapsulator, bytes]:
        private = _kem_classes(kem)[0].generate()
        return private, private.public_key().public_bytes_raw()

    def kem_encapsulate(self, kem: str, public: bytes) -> tuple[bytes, bytes]:
        return _kem_classes(kem)[1].from_public_bytes(public).encapsulate()


class OqsProvider(Provider):
    """liboqs for the KEMs and verification; signing stays on the seed form (see module doc)."""

    def __init__(self, oqs: Any) -> None:
        self._oqs = oqs
        version = getattr(oqs, "oqs_version", lambda: "?")()
        self.name = f"liboqs ({version})"

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        with self._oqs.Signature(SIG_ALG) as sig:
            try:
                return bool(sig.verify(message, signature, public))
            except Exception:
                return False

    def kem_keypair(self, kem: str) -> tuple[KemDecapsulator, bytes]:
        _kem_classes(kem)
        private = self._oqs.KeyEncapsulation(kem)
        public = private.generate_keypair()
        return _OqsDecapsulator(private), bytes(public)

    def kem_encapsulate(self, kem: str, public: bytes) -> tuple[bytes, bytes]:
        _kem_classes(kem)
        with self._oqs.KeyEncapsulation(kem) as enc:
            ciphertext, secret = enc.encap_secret(public)
        return bytes(secret), bytes(ciphertext)


class _OqsDecapsulator:
    def __init__(self, kem: Any) -> None:
        self._kem = kem

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._kem.decap_secret(ciphertext))
        finally:
            self._kem.free()


def _kem_classes(kem: str) -> Any:
    try:
        return _KEM_CLASSES[kem]
    except KeyError:
        raise PQCError(f"unsupported KEM {kem!r}", f"use one of {', '.join(KEMS)}") from None


def liboqs_present() -> bool:
    """Is a liboqs shared library installed? (Never imports `oqs` to find out.)"""
    return ctypes.util.find_library("oqs") is not None


def _load_oqs() -> OqsProvider | None:
    if not liboqs_present():
        return None
    try:
        import oqs  # type: ignore[import-not-found]
    except Exception:  # a broken optional binding must not stop the host
        return None
    return OqsProvider(oqs)


@functools.cache
def get_provider(name: str | None = None) -> Provider:
    """The active provider: `name` ("cryptography", "liboqs", "QUAC 100 Hardware") or the best present.

    Without a name, `QUANTAVIRT_PQC_PROVIDER` may choose; otherwise liboqs when installed,
    else cryptography.
    """
    name = name or os.environ.get("QUANTAVIRT_PQC_PROVIDER") or None
    if name == QUAC or (name and name.lower().startswith("quac")):
        raise PQCError(f"PQC provider {QUAC!r} is not available on this host",
                       "install the QUAC 100 driver, or use the cryptography provider")
    if name in (None, "liboqs"):
        oqs = _load_oqs()
        if oqs is not None:
            return oqs
        if name == "liboqs":
            raise PQCError("PQC provider 'liboqs' is not available (no liboqs shared library found)",
                           "install liboqs, or use the cryptography provider")
    if name in (None, "cryptography"):
        return CryptographyProvider()
    raise PQCError(f"unknown PQC provider {name!r}", f"use cryptography, liboqs or {QUAC}")
