"""`qvplan`: declarative plan-and-apply for live migrations."""

from __future__ import annotations

import click

from .. import __version__
from .common import OneLineErrors
from .examples import attach


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message="%(version)s")
def main() -> None:
    """Plan and apply live migrations of running VMs across QuantaVirt hosts."""


def _register() -> None:
    from . import qvplan_lab

    main.add_command(qvplan_lab.lab)
    main.add_command(qvplan_lab.facts)
    from . import qvplan_plan

    qvplan_plan.register(main)

    from . import qvplan_apply

    qvplan_apply.register(main)


_register()
attach(main, "qvplan")  # every --help ends with an example (examples.py)


if __name__ == "__main__":
    main()
