"""The apply journal: one JSON object per line, under `.qvplan/` beside the plan."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, plan_file: str | Path, plan_hash: str | None) -> None:
        folder = Path(plan_file).resolve().parent / ".qvplan"
        folder.mkdir(exist_ok=True)
        self.path = folder / f"apply-{time.strftime('%Y%m%d-%H%M%S')}-{Path(plan_file).stem}.jsonl"
        self.write("apply", plan=str(plan_file), plan_hash=plan_hash)

    def write(self, kind: str, **fields: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": time.time(), "kind": kind, **fields}) + "\n")


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
