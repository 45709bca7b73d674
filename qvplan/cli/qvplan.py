"""`qvplan`: declarative plan-and-apply for live migrations."""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
