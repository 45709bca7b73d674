"""Every command's --help ends with an example; the thin commands never load matplotlib or
prometheus_client."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from qvplan.cli.examples import EXAMPLES
from qvplan.cli.quantavirt import main as quantavirt
from qvplan.cli.qvplan import main as qvplan


def walk(command: click.Command, path: list[str]):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), [*path, name])


COMMANDS = [(root, path) for root, name in ((qvplan, "qvplan"), (quantavirt, "quantavirt"))
            for path, _ in walk(root, [name])]


@pytest.mark.parametrize(("root", "path"), COMMANDS, ids=[" ".join(p) for _, p in COMMANDS])
def test_help_ends_with_an_example_of_the_command(root, path):
    out = CliRunner().invoke(root, [*path[1:], "--help"], prog_name=path[0])
    assert out.exit_code == 0, out.output
    last = out.output.strip().splitlines()[-1].strip()
    assert last.startswith(f"Example: {' '.join(path[:1])}"), out.output
    assert EXAMPLES[" ".join(path)] in last


def test_thin_commands_import_neither_matplotlib_nor_prometheus_client():
    code = ("import sys; from qvplan.cli import quantavirt, qvplan; "
            "print(sorted(m for m in ('matplotlib', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
