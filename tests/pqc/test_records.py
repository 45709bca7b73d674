"""The sans-IO record layer: round trips under any split, rekeying, and no silent corruption."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qvplan.pqc import PQCError, RecordOpener, RecordSealer, TruncatedStream
from qvplan.pqc.records import DATA, END, HEADER_LEN, MAX_RECORD, TAG_LEN

SECRET = bytes(range(48))
payloads = st.lists(st.binary(min_size=0, max_size=3000), min_size=0, max_size=12)


def _stream(items: list[bytes], **kw: int) -> bytes:
    sealer = RecordSealer(SECRET, **kw)
    return b"".join([*(bytes(sealer.seal(p)) for p in items), bytes(sealer.seal_end())])


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points)]


def _open_all(pieces: list[bytes], **kw: int) -> tuple[list[bytes], RecordOpener]:
    opener, out = RecordOpener(SECRET, **kw), []
    for piece in pieces:
        opener.feed(piece)
        while (record := opener.pull()) is not None:
            if record[0] == DATA:
                out.append(record[1])
    opener.eof()
    return out, opener


@settings(max_examples=150, deadline=None)
@given(items=payloads, cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_round_trips(items: list[bytes], cuts: list[int]) -> None:
    got, opener = _open_all(_cut(_stream(items), cuts))
    assert got == items and opener.ended


@settings(max_examples=60, deadline=None)
@given(items=payloads, cuts=st.lists(st.integers(min_value=0), max_size=20),
       every=st.integers(min_value=1, max_value=4))
def test_rekeying_is_in_step(items: list[bytes], cuts: list[int], every: int) -> None:
    kw = {"rekey_records": every, "rekey_bytes": 5000}
    got, _ = _open_all(_cut(_stream(items, **kw), cuts), **kw)
    assert got == items


@settings(max_examples=150, deadline=None)
@given(items=payloads.filter(bool), where=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_caught(items: list[bytes], where: int, bit: int) -> None:
    data = bytearray(_stream(items))
    data[where % len(data)] ^= 1 << bit
    opener, got = RecordOpener(SECRET), []
    with pytest.raises(PQCError):
        opener.feed(data)
        while (record := opener.pull()) is not None:
            got.append(record[1])
        opener.eof()
    assert got == items[: len(got)]  # never a corrupted payload


def test_rekey_changes_the_key_and_both_sides_follow() -> None:
    sealer = RecordSealer(SECRET, rekey_records=2)
    first, second, third = (bytes(sealer.seal(b"same")) for _ in range(3))
    assert sealer.generation == 1 and first[HEADER_LEN:] != third[HEADER_LEN:]
    opener = RecordOpener(SECRET, rekey_records=2)
    for rec in (first, second, third):
        opener.feed(rec)
        assert opener.pull() == (DATA, b"same")
    assert opener.generation == 1


def test_rekey_by_bytes() -> None:
    sealer, opener = RecordSealer(SECRET, rekey_bytes=100), RecordOpener(SECRET, rekey_bytes=100)
    for _ in range(5):
        opener.feed(sealer.seal(os.urandom(60)))
        assert opener.pull() is not None
    assert sealer.generation == opener.generation == 2


def test_large_records_and_limits() -> None:
    sealer, opener = RecordSealer(SECRET), RecordOpener(SECRET)
    big = os.urandom(MAX_RECORD)
    rec = sealer.seal(big)
    assert len(rec) == HEADER_LEN + MAX_RECORD + TAG_LEN
    view = opener.get_buffer(len(rec))
    view[: len(rec)] = rec  # as recv_into would
    view.release()
    opener.buffer_updated(len(rec))
    assert opener.pull() == (DATA, big)
    with pytest.raises(ValueError):
        sealer.seal(bytes(MAX_RECORD + 1))
    assert [len(r) for r in sealer.seal_chunks(bytes(MAX_RECORD + 10))] == [len(rec), HEADER_LEN + 10 + TAG_LEN]


def test_nonces_never_repeat_within_a_key() -> None:
    sealer = RecordSealer(SECRET)
    nonces = {sealer._nonce(seq) for seq in range(10000)}
    assert len(nonces) == 10000


def test_end_of_stream_then_nothing() -> None:
    sealer, opener = RecordSealer(SECRET), RecordOpener(SECRET)
    opener.feed(sealer.seal_end())
    assert opener.pull() == (END, b"") and opener.ended
    with pytest.raises(PQCError, match="after end of stream"):
        sealer.seal(b"more")
    opener.eof()  # a clean end


def test_truncation_and_failure_is_sticky() -> None:
    sealer, opener = RecordSealer(SECRET), RecordOpener(SECRET)
    opener.feed(sealer.seal(b"hello"))
    assert opener.pull() == (DATA, b"hello")
    with pytest.raises(TruncatedStream):
        opener.eof()
    with pytest.raises(TruncatedStream):
        opener.pull()
