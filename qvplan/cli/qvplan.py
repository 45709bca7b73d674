"""`qvplan`: declarative plan-and-apply for live migrations."""

from __future__ import annotations

import contextlib
import os
import sys

from .common import entry_point

COMMANDS = {
    "lab": "qvplan.cli.qvplan_lab:lab",
    "facts": "qvplan.cli.qvplan_lab:facts",
    "validate": "qvplan.cli.qvplan_plan:validate",
    "plan": "qvplan.cli.qvplan_plan:plan_cmd",
    "show": "qvplan.cli.qvplan_plan:show",
    "schema": "qvplan.cli.qvplan_plan:schema",
    "apply": "qvplan.cli.qvplan_apply:apply",
}


@entry_point(COMMANDS)
def main() -> None:
    """Plan and apply live migrations of running VMs across QuantaVirt hosts."""


def run() -> None:
    """The program: `main`, then exit without the interpreter's teardown. Freeing some 600 modules
    costs 0.1–0.5 s (more on a loaded machine), and by then every file is closed and every
    connection ended; only stdout and stderr need flushing. (`main` stays importable for tests.)"""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as done:
        code = done.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    run()
