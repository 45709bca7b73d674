"""A host's identity (ML-DSA-65 key pair) and the store of peers it trusts.

Layout under the state dir:

    pqc/host-identity.key        private seed, mode 0600
    pqc/host-identity.pub        public key (what key-export prints)
    pqc/trusted/<name>.pub       imported peer public keys
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import PQCError
from .keys import PRIVATE, PUBLIC, KeyFileError, armor, dearmor, fingerprint, read_public, write_atomic
from .provider import Provider, Signer, get_provider

IDENTITY = "host-identity"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TrustError(PQCError):
    reason = "trust store"


class HostIdentity:
    """This host's signing key. `public_key` (raw bytes) and `fingerprint` identify it everywhere."""

    def __init__(self, seed: bytes, provider: Provider | None = None, *, public_key: bytes | None = None) -> None:
        self.provider = provider or get_provider()
        self._signer: Signer
        self._signer, derived = self.provider.signer(seed)
        # `public_key` may differ from the derived one only in tests that forge a bad signature.
        self.public_key: bytes = public_key if public_key is not None else derived
        self.fingerprint: str = fingerprint(self.public_key)

    @classmethod
    def generate(cls, provider: Provider | None = None) -> HostIdentity:
        provider = provider or get_provider()
        return cls(provider.new_seed(), provider)

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> HostIdentity:
        """Load `state_dir/pqc/host-identity.key`, creating the key pair on first use."""
        base = Path(state_dir) / "pqc"
        key_path, pub_path = base / f"{IDENTITY}.key", base / f"{IDENTITY}.pub"
        provider = get_provider()
        if not key_path.exists():
            base.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o700)
            seed = provider.new_seed()
            write_atomic(key_path, armor(seed, PRIVATE), 0o600)
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise PQCError(f"private key {key_path} is accessible by others (mode {mode:04o})",
                           f"chmod 600 {key_path}")
        seed = dearmor(key_path.read_text(encoding="ascii"), PRIVATE, str(key_path))
        ident = cls(seed, provider)
        if not pub_path.exists() or pub_path.read_text(encoding="ascii") != ident.export_public():
            write_atomic(pub_path, ident.export_public(), 0o644)
        return ident

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def export_public(self) -> str:
        return armor(self.public_key, PUBLIC)


class TrustStore:
    """Peers' public keys by name, read from disk on every look-up so imports apply at once."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "pqc" / "trusted"

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise TrustError(f"bad key name {name!r}",
                             "use letters, digits, '.', '_' or '-' (up to 64, starting with a letter or digit)")
        return self.dir / f"{name}.pub"

    def _load(self) -> Iterator[tuple[str, bytes]]:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.pub")):
            try:
                yield path.stem, read_public(path)
            except (KeyFileError, OSError):
                continue  # a damaged entry trusts nobody; `status` shows the good ones

    def add(self, name: str, public_key: bytes, force: bool = False) -> str:
        """Trust `public_key` as `name`; refuse a clash (name taken, or key known by another name)."""
        path = self._path(name)
        try:
            get_provider().check_public(public_key)
        except ValueError:
            raise KeyFileError(f"not a valid ML-DSA-65 public key ({len(public_key)} bytes)",
                               "export the key with 'quantavirt pqc key-export host-identity --public'") from None
        fp = fingerprint(public_key)
        if not force:
            for other, key in self._load():
                if other == name and key != public_key:
                    raise TrustError(f"a different key is already trusted as {name!r} ({fingerprint(key)})",
                                     "pick another --name, or replace it with --force")
                if other != name and key == public_key:
                    raise TrustError(f"this key ({fp}) is already trusted as {other!r}",
                                     "keep that name, or add it again with --force")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, armor(public_key, PUBLIC), 0o644)
        return fp

    def find(self, public_key: bytes) -> str | None:
        """The name `public_key` is trusted as, or None."""
        for name, key in self._load():
            if key == public_key:
                return name
        return None

    def entries(self) -> list[tuple[str, str]]:
        """(name, fingerprint) of every trusted key, by name."""
        return [(name, fingerprint(key)) for name, key in self._load()]
