"""The record layer, sans I/O: AES-256-GCM records, one key per direction.

Wire form of every record (handshake frames too): a 5-byte header, type (1) and body length (4,
big-endian), then the body. For encrypted records the body is ciphertext + 16-byte tag, the
header is the associated data, and the sequence number is implied: nonce = IV xor counter, so a
replayed, dropped or reordered record fails authentication. The opener then works out which of
those it was, for the error message only. An END record closes a direction; a stream that stops
without one is truncated.

Keys come from a 48-byte traffic secret (HKDF-Expand, SHA-384). Both sides move to the next
secret after `rekey_records` records or `rekey_bytes` payload bytes, far below AES-GCM's limits.

`RecordSealer.seal` encrypts straight into the output buffer (header + ciphertext, no join);
`seal_into` into a buffer the caller reuses. `RecordOpener` either opens a record the caller
framed (`open`, or `open_into` a reused buffer) or parses its own buffer, which a relay fills
with `recv_into` through `get_buffer`/`buffer_updated` (asyncio BufferedProtocol style) without
copying.
"""

from __future__ import annotations

import struct
from collections import deque

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import ProtocolError, RecordError, ReorderedRecord, ReplayedRecord, TamperedRecord, TruncatedStream

# Record types. Plaintext ones only appear during the handshake.
HELLO, KEM_CIPHERTEXT, REFUSAL = 0x01, 0x02, 0x03
FINISHED, END, DATA = 0x14, 0x15, 0x17
ENCRYPTED_TYPES = frozenset({FINISHED, END, DATA})

HEADER = struct.Struct(">BI")
HEADER_LEN = HEADER.size
TAG_LEN = 16
MAX_RECORD = 4 << 20  # largest payload of one record
MAX_PLAIN_FRAME = 64 << 10  # largest handshake message
REKEY_RECORDS = 1 << 24
REKEY_BYTES = 1 << 36
_LOOKAHEAD = 16  # how far ahead to look when diagnosing a reordered record
_RECENT_TAGS = 64  # how far back to look when diagnosing a replay
SECRET_LEN = 48


def _expand(secret: bytes, label: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA384(), length, b"qvplan-pqc/1 " + label).derive(secret)


class _Direction:
    """Key, IV and counters of one direction; shared logic of sealer and opener."""

    def __init__(self, secret: bytes, rekey_records: int, rekey_bytes: int, max_record: int) -> None:
        if len(secret) != SECRET_LEN:
            raise ValueError(f"traffic secret must be {SECRET_LEN} bytes")
        if not 0 < max_record <= MAX_RECORD:
            raise ValueError(f"max_record must be 1..{MAX_RECORD}")
        self.rekey_records, self.rekey_bytes, self.max_record = rekey_records, rekey_bytes, max_record
        self.generation = 0
        self._install(secret)

    def _install(self, secret: bytes) -> None:
        self._secret = secret
        self._aead = AESGCM(_expand(secret, b"key", 32))
        self._iv = int.from_bytes(_expand(secret, b"iv", 12), "big")
        self.seq = 0
        self.bytes = 0

    def _nonce(self, seq: int) -> bytes:
        return (self._iv ^ seq).to_bytes(12, "big")

    def _advance(self, payload_len: int) -> None:
        self.seq += 1
        self.bytes += payload_len
        if self.seq >= self.rekey_records or self.bytes >= self.rekey_bytes:
            self.generation += 1
            self._install(_expand(self._secret, b"rekey", SECRET_LEN))


class RecordSealer(_Direction):
    """Turns payloads into records for one direction."""

    def __init__(self, secret: bytes, *, rekey_records: int = REKEY_RECORDS, rekey_bytes: int = REKEY_BYTES,
                 max_record: int = MAX_RECORD) -> None:
        super().__init__(secret, rekey_records, rekey_bytes, max_record)
        self.ended = False

    def seal(self, data: bytes | bytearray | memoryview, rtype: int = DATA) -> bytearray:
        """One record (header + ciphertext + tag) carrying `data` (at most `max_record` bytes)."""
        out = bytearray(HEADER_LEN + len(data) + TAG_LEN)
        self.seal_into(data, out, rtype)
        return out

    def seal_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
                  rtype: int = DATA) -> int:
        """Write the record carrying `data` to the start of `out` (a buffer the caller reuses, so
        a relay allocates nothing per record); returns the record's length."""
        if self.ended:
            raise RecordError("cannot send after end of stream", "open a new channel")
        n = len(data)
        if n > self.max_record:
            raise ValueError(f"record payload of {n} bytes exceeds {self.max_record}")
        size = HEADER_LEN + n + TAG_LEN
        header = HEADER.pack(rtype, n + TAG_LEN)
        with memoryview(out) as view:
            view[:HEADER_LEN] = header
            with view[HEADER_LEN:size] as body:
                self._aead.encrypt_into(self._nonce(self.seq), data, header, body)
        self._advance(n)
        return size

    def seal_chunks(self, data: bytes | bytearray | memoryview) -> list[bytearray]:
        """`data` of any size as DATA records of at most `max_record` bytes each."""
        view = memoryview(data)
        step = self.max_record
        return [self.seal(view[i:i + step]) for i in range(0, len(view), step)]

    def seal_end(self) -> bytearray:
        """The authenticated end-of-stream record; the sealer refuses more after it."""
        record = self.seal(b"", END)
        self.ended = True
        return record


class RecordOpener(_Direction):
    """Checks and decrypts records of one direction; any failure is final."""

    def __init__(self, secret: bytes, *, rekey_records: int = REKEY_RECORDS, rekey_bytes: int = REKEY_BYTES,
                 max_record: int = MAX_RECORD) -> None:
        super().__init__(secret, rekey_records, rekey_bytes, max_record)
        self.ended = False
        self._failed: RecordError | None = None
        self._recent: deque[bytes] = deque(maxlen=_RECENT_TAGS)
        self._buf = bytearray(1 << 16)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of received bytes in _buf

    # -- framed input -------------------------------------------------------------------------

    def parse_header(self, header: bytes | bytearray | memoryview) -> tuple[int, int]:
        """(type, body length) of a record header; refuses what no honest peer sends."""
        self._check_alive()
        rtype, length = HEADER.unpack(header)
        if rtype not in ENCRYPTED_TYPES or not TAG_LEN <= length <= self.max_record + TAG_LEN:
            self._fail(TamperedRecord(f"corrupt record header (type {rtype:#04x}, length {length})",
                                      "the stream was altered in transit; check the network path"))
        if self.ended:
            self._fail(ProtocolError("record after end of stream", "the peer is not speaking qvplan-pqc/1"))
        return rtype, length

    def open(self, header: bytes | bytearray | memoryview, body: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        """(type, payload) of one framed record. Sets `ended` on END."""
        rtype, length = self.parse_header(header)
        if len(body) != length:
            self._fail(TruncatedStream("record shorter than its header says", "the connection was cut; retry"))
        header = bytes(header)
        try:
            payload = self._aead.decrypt(self._nonce(self.seq), body, header)
        except InvalidTag:
            self._fail(self._diagnose(header, body))
        self._accepted(rtype, body, len(payload))
        return rtype, payload

    def open_into(self, header: bytes | bytearray | memoryview, body: bytes | bytearray | memoryview,
                  out: bytearray | memoryview) -> tuple[int, int]:
        """(type, payload length) of one framed record, its payload decrypted to the start of
        `out` (a buffer the caller reuses). The same checks as `open`."""
        rtype, length = self.parse_header(header)
        if len(body) != length:
            self._fail(TruncatedStream("record shorter than its header says", "the connection was cut; retry"))
        n = length - TAG_LEN
        if len(out) < n:
            raise ValueError(f"output buffer of {len(out)} bytes is smaller than the record's {n}")
        header = bytes(header)
        try:
            with memoryview(out) as view, view[:n] as target:
                self._aead.decrypt_into(self._nonce(self.seq), body, header, target)
        except InvalidTag:
            self._fail(self._diagnose(header, body))
        self._accepted(rtype, body, n)
        return rtype, n

    def _accepted(self, rtype: int, body: bytes | bytearray | memoryview, payload_len: int) -> None:
        """Count an authenticated record; END must be empty and closes the direction."""
        self._recent.append(bytes(body[-TAG_LEN:]))
        self._advance(payload_len)
        if rtype == END:
            if payload_len:
                self._fail(ProtocolError("end-of-stream record carries data", "peer bug"))
            self.ended = True

    # -- buffered input (for relays doing their own recv_into) --------------------------------

    @property
    def pending(self) -> int:
        """Bytes received but not yet parsed."""
        return self._end - self._start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into; call `buffer_updated(n)` after writing n bytes there.

        Release the view before the next call (the buffer may have to grow).
        """
        want = max(sizehint, 1 << 18)
        if self._start and self._start == self._end:
            self._start = self._end = 0
        if len(self._buf) - self._end < want:
            if self._start:  # compact: move the unparsed tail to the front
                self._buf[: self._end - self._start] = self._buf[self._start: self._end]
                self._end -= self._start
                self._start = 0
            if len(self._buf) - self._end < want:
                self._buf.extend(bytes(self._end + want - len(self._buf)))
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy received bytes in (the simple way; `get_buffer` avoids the copy)."""
        n = len(data)
        self.get_buffer(n)[:n] = data
        self._end += n

    def pull(self) -> tuple[int, bytes] | None:
        """The next complete record from the buffer as (type, payload), or None if incomplete."""
        return self._pull(None)  # type: ignore[return-value]

    def pull_into(self, out: bytearray | memoryview) -> tuple[int, int] | None:
        """The next complete record from the buffer as (type, payload length), its payload
        decrypted to the start of `out` (a buffer the caller reuses); None if incomplete."""
        return self._pull(out)  # type: ignore[return-value]

    def _pull(self, out: bytearray | memoryview | None) -> tuple[int, bytes] | tuple[int, int] | None:
        self._check_alive()
        avail = self._end - self._start
        if avail < HEADER_LEN:
            return None
        with memoryview(self._buf) as view, view[self._start: self._start + HEADER_LEN] as header:
            _, length = self.parse_header(header)
            if avail < HEADER_LEN + length:
                return None
            with view[self._start + HEADER_LEN: self._start + HEADER_LEN + length] as body:
                record = self.open(header, body) if out is None else self.open_into(header, body, out)
        self._start += HEADER_LEN + length
        return record

    def eof(self) -> None:
        """The transport ended: fine after END, truncation otherwise."""
        if self._failed:
            raise self._failed
        if not self.ended:
            partial = self._end - self._start
            what = f" inside a record ({partial} bytes pending)" if partial else ""
            self._fail(TruncatedStream(f"stream truncated: connection closed before end of stream{what}",
                                       "the connection was cut or tampered with; retry the transfer"))

    # -- failure -------------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._failed:
            raise self._failed

    def _fail(self, err: RecordError) -> None:
        self._failed = err
        raise err

    def _diagnose(self, header: bytes, body: bytes | bytearray | memoryview) -> RecordError:
        """Why did this record not authenticate? Replay, reorder or tampering (slow path)."""
        if bytes(body[-TAG_LEN:]) in self._recent:
            return ReplayedRecord(f"replayed record at sequence {self.seq}: a record already received came again",
                                  "someone is replaying traffic on the network path; the transfer was stopped")
        for ahead in range(1, _LOOKAHEAD + 1):
            try:
                self._aead.decrypt(self._nonce(self.seq + ahead), body, header)
            except InvalidTag:
                continue
            return ReorderedRecord(f"reordered record: expected sequence {self.seq}, got {self.seq + ahead}",
                                   "records were dropped or reordered on the network path; the transfer was stopped")
        return TamperedRecord(f"record {self.seq} failed authentication (tampered ciphertext or header)",
                              "the stream was altered in transit; check the network path and retry")
