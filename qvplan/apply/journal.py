"""The apply journal: one JSON object per line, under `.qvplan/` beside the plan.

Kinds of line, each with "time" (epoch seconds) and "kind":
  apply   the header: plan, plan_hash (what the plan asks for), facts_hash, variables, var_files,
          saved (a saved .json plan), pid, controller, hosts, marks (epoch seconds at which the
          steps before the moves ended: session start, locked, facts, planned)
  resume  an apply continued with `--resume` (appended to the same journal): pid, controller
  trust   a key imported: importer, holder, fingerprint
  start   a move begins: vm, source, dest (written before the agent is asked)
  follow  a move an interrupted apply left running, followed to its end: vm, source, dest
  phase   vm, phase, percent
  end     a move's outcome: vm, source, dest, ok, error, figures (transferred, iteration, ...)
  skip    vm, reason
  plan    the plan the apply walks (Plan.to_dict: moves, checks, waves, settings incl. --target)
  passes  a move's passes from its source agent (migration/recent.py), for the report's chart
  done    ok, placement {vm: host}
A resumed apply appends to the journal it resumes, so one file tells the whole story.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QVError


class JournalError(QVError):
    """A journal that cannot be resumed from."""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, plan_file: str | Path, **header: Any) -> Journal:
        """A new journal for an apply of `plan_file`, starting with its `apply` header."""
        folder = Path(plan_file).resolve().parent / ".qvplan"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"apply-{stamp}-{Path(plan_file).stem}.jsonl"
        n = 1
        while path.exists():  # two applies in the same second
            n += 1
            path = folder / f"apply-{stamp}-{n}-{Path(plan_file).stem}.jsonl"
        journal = cls(path)
        journal.write("apply", plan=str(Path(plan_file).resolve()), pid=os.getpid(),
                      controller=socket.gethostname(), **header)
        return journal

    @classmethod
    def reopen(cls, path: str | Path) -> tuple[Journal, JournalState]:
        """An existing journal to append a resume to, with what it says so far."""
        state = JournalState.read(path)
        journal = cls(Path(path).resolve())
        with journal.path.open("rb+") as f:  # a killed apply may have left half a line
            f.seek(0, 2)
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")
        journal.write("resume", pid=os.getpid(), controller=socket.gethostname())
        return journal, state

    def write(self, kind: str, **fields: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": time.time(), "kind": kind, **fields}, default=str) + "\n")


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every entry; a line a killed apply left half-written is left out."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


@dataclass
class JournalState:
    """What a journal says: its header, the moves that completed, and those it left unfinished."""

    path: Path
    header: dict[str, Any]
    completed: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    unfinished: dict[str, dict[str, Any]] = field(default_factory=dict)  # vm → its start/follow line
    finished: bool = False  # a `done` line after the last resume

    @classmethod
    def read(cls, path: str | Path) -> JournalState:
        p = Path(path)
        try:
            lines = read_journal(p)
        except (OSError, UnicodeDecodeError) as err:
            raise JournalError(f"cannot read journal {p}: {getattr(err, 'strerror', None) or err}",
                               "pass the .jsonl file the apply printed (under .qvplan/ beside the plan)") from None
        if not lines or lines[0].get("kind") != "apply":
            raise JournalError(f"{p} is not an apply journal (no apply header)",
                               "pass the .jsonl file the apply printed (under .qvplan/ beside the plan)")
        state = cls(p.resolve(), lines[0])
        for e in lines[1:]:
            kind, vm = e.get("kind"), e.get("vm")
            if kind in ("start", "follow"):
                state.unfinished[vm] = {**e, "session": e.get("session") or state.unfinished.get(vm, {}).get("session")}
            elif kind == "session" and vm in state.unfinished:  # the agent's id of the move
                state.unfinished[vm] = {**state.unfinished[vm], "session": e.get("session")}
            elif kind == "end":
                state.unfinished.pop(vm, None)
                if e.get("ok"):
                    state.completed[vm].append((e.get("source"), e.get("dest")))
            elif kind == "resume":
                state.finished = False
            elif kind == "done":
                state.finished = True
        return state

    def moved(self, vm: str) -> bool:
        return bool(self.completed.get(vm))
