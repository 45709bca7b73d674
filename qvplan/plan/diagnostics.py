"""Problems found in a plan, collected as values (many can be wrong at once) with where they are."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QVError


@dataclass(frozen=True)
class Diagnostic:
    """One problem: what is wrong, how to fix it, and where (file, line, dotted key path)."""

    message: str
    fix: str | None = None
    file: str | None = None
    line: int | None = None
    key: str | None = None

    @property
    def where(self) -> str:
        place = self.file or "<plan>"
        if self.line is not None:
            place += f":{self.line}"
        return f"{place} {self.key}" if self.key else place

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text} — {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, object]:
        return {"message": self.message, "fix": self.fix, "file": self.file, "line": self.line,
                "key": self.key}


class PlanError(QVError):
    """A plan that cannot be planned: every problem found, each with its location."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics) or [Diagnostic("invalid plan")]
        first = self.diagnostics[0]
        more = len(self.diagnostics) - 1
        cause = str(Diagnostic(first.message, None, first.file, first.line, first.key))
        if more:
            cause += f" (and {more} more problem{'s' if more > 1 else ''})"
        super().__init__(cause, first.fix)

    def lines(self) -> list[str]:
        return [str(d) for d in self.diagnostics]


def key_path(path: tuple[object, ...]) -> str:
    """('vms', 'web-01', 'host') → `vms.web-01.host`; list indexes as `[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
