"""`make demo` applies again only when every failed move was a copy refused as ram-mismatch."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qvplan.demo import only_refused_copies


def journal(folder: Path, name: str, ends: list[dict], age: int) -> None:
    path = folder / f"apply-{name}-demo.jsonl"
    path.write_text("".join(json.dumps({"kind": "end", **e}) + "\n" for e in ends))
    os.utime(path, (1_000_000 + age, 1_000_000 + age))


def test_only_refused_copies_reads_the_latest_journal(tmp_path: Path) -> None:
    assert not only_refused_copies(tmp_path)  # no apply yet
    journal(tmp_path, "1", [{"vm": "a", "ok": False, "code": "timeout"}], age=1)
    assert not only_refused_copies(tmp_path)
    journal(tmp_path, "2", [{"vm": "a", "ok": True}, {"vm": "b", "ok": False, "code": "ram-mismatch"},
                            {"vm": "c", "ok": False, "code": "cancelled"}], age=2)
    assert only_refused_copies(tmp_path)
    journal(tmp_path, "3", [{"vm": "b", "ok": False, "code": "ram-mismatch"},
                            {"vm": "d", "ok": False, "code": "connection-reset"}], age=3)
    assert not only_refused_copies(tmp_path)  # another failure too: not the QEMU bug alone
    journal(tmp_path, "4", [{"vm": "c", "ok": False, "code": "cancelled"}], age=4)
    assert not only_refused_copies(tmp_path)  # nothing was refused as ram-mismatch
