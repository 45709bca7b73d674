"""Key files and fingerprints.

A key file is armored text, one header line naming the algorithm, base64 lines, one footer:

    -----BEGIN QVPLAN ML-DSA-65 PUBLIC KEY-----
    <base64 of the raw 1952-byte public key, 64 characters a line>
    -----END QVPLAN ML-DSA-65 PUBLIC KEY-----

Private keys use the same form with PRIVATE KEY and the 32-byte FIPS 204 seed. Anything
else is refused with one line saying what is wrong. Fingerprints are OpenSSH-style:
"SHA256:" + unpadded base64 of SHA-256 over the raw public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from .errors import PQCError
from .provider import SIG_ALG, get_provider

PUBLIC = "PUBLIC KEY"
PRIVATE = "PRIVATE KEY"


class KeyFileError(PQCError):
    reason = "bad key file"


def fingerprint(public: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")


def _label(kind: str) -> str:
    return f"QVPLAN {SIG_ALG} {kind}"


def armor(raw: bytes, kind: str) -> str:
    b64 = base64.b64encode(raw).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {_label(kind)}-----", *lines, f"-----END {_label(kind)}-----", ""])


def dearmor(text: str, kind: str, source: str) -> bytes:
    """The raw bytes in an armored key text, or KeyFileError naming `source` and the problem."""
    fix = f"use a file made by 'quantavirt pqc key-export host-identity --public' ({SIG_ALG})"
    lines = [line.strip() for line in text.strip().splitlines()]
    begin, end = f"-----BEGIN {_label(kind)}-----", f"-----END {_label(kind)}-----"
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        if kind == PUBLIC and lines and lines[0] == f"-----BEGIN {_label(PRIVATE)}-----":
            raise KeyFileError(f"{source}: is a private key, not a public key", fix)
        why = "empty file" if not lines else f"no '{begin}' ... '{end}' armor"
        raise KeyFileError(f"{source}: not an {SIG_ALG} {kind.lower()} file ({why})", fix)
    try:
        raw = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: the key body is not valid base64", fix) from None
    if kind == PUBLIC:
        try:
            get_provider().check_public(raw)
        except ValueError:
            raise KeyFileError(f"{source}: not a valid {SIG_ALG} public key ({len(raw)} bytes)", fix) from None
    elif len(raw) != 32:
        raise KeyFileError(f"{source}: not a {SIG_ALG} private key seed ({len(raw)} bytes, expected 32)", fix)
    return raw


def read_public(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a text key file", f"export keys with 'quantavirt pqc key-export' ({SIG_ALG})")\
            from None
    return dearmor(text, PUBLIC, str(path))


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` via a temporary file created with `mode` (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
