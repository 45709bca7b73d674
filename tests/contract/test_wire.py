"""The migration protocol's messages are checked before anything acts on them: a peer's
malformed field is a protocol error, never an exception half-way through setting a VM up."""

from __future__ import annotations

import pytest

from qvplan.contract import wire

REQUEST = {"session": "0123456789abcdef", "vm": {}, "flags": {}}


def test_a_ram_key_is_256_bits_in_hex_or_absent() -> None:
    key = "ab" * 32
    parsed = wire.parse({**REQUEST, "ram_key": key}, wire.MigrateRequest)
    assert isinstance(parsed, wire.MigrateRequest) and bytes.fromhex(parsed.ram_key or "") == bytes.fromhex(key)
    assert wire.parse(REQUEST, wire.MigrateRequest).ram_key is None  # type: ignore[attr-defined]
    for bad in ("zz" * 32, "ab" * 16, "AB" * 32 + "00", "ab" * 32 + "\n", 42):
        with pytest.raises(wire.WireError):
            wire.parse({**REQUEST, "ram_key": bad}, wire.MigrateRequest)


def test_only_a_destination_that_says_so_takes_the_commit_ahead_of_received() -> None:
    older = wire.parse({"ok": True}, wire.SetupReply)  # a destination from before commit_ahead
    assert isinstance(older, wire.SetupReply) and older.commit_ahead is False
    newer = wire.parse(wire.SetupReply(ok=True, commit_ahead=True).dump(), wire.SetupReply)
    assert isinstance(newer, wire.SetupReply) and newer.commit_ahead is True
    with pytest.raises(wire.WireError):
        wire.parse({"ok": True, "commit_ahead": "maybe"}, wire.SetupReply)
