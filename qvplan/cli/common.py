"""What every command shares: turning errors into one line, and finding state and config."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from ..errors import QVError

T = TypeVar("T")


GENERIC_CODES = (None, "", "error", "bad-request")  # a usage mistake needs no code to look up


def one_line(err: QVError) -> str:
    """`Error: cause — fix (reason: code)`: the code is what scripts and `--json` match on."""
    code = f" (reason: {err.code})" if err.code not in GENERIC_CODES else ""
    return f"Error: {err}{code}"


class OneLineErrors(click.Group):
    """A click group that prints any `QVError` as one line on stderr and exits 1 (with `--json`
    the command prints `{error, fix, code}` itself)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QVError as err:
            if ctx.meta.get("as_json"):
                click.echo(json.dumps(err.as_dict(), indent=2))
            else:
                click.echo(one_line(err), err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


class LazyGroup(OneLineErrors):
    """A group whose subcommands are imported only when one is run (or help lists them).

    `lazy` maps a command name to "module:attribute", so `--version` and one command's `--help`
    load only what they show.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self.example_path = ""  # "qvplan", "quantavirt vm": where examples.py looks its commands up

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            from .examples import attach

            module, attr = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
            attach(command, f"{self.example_path} {cmd_name}")  # its --help ends with an example
        return super().get_command(ctx, cmd_name)


def entry_point(lazy: dict[str, str]) -> Callable[[Callable[..., Any]], LazyGroup]:
    """The top group of a CLI: `--version`, `-h`, and `lazy` subcommands."""
    from .. import __version__

    def wrap(fn: Callable[..., Any]) -> LazyGroup:
        from .examples import attach

        fn = click.version_option(__version__, "--version", message="%(version)s")(fn)
        group = click.group(cls=LazyGroup, lazy=lazy, context_settings={"help_option_names": ["-h", "--help"]})(fn)
        attach(group, fn.__module__.rsplit(".", 1)[-1])  # qvplan.cli.qvplan → "qvplan"
        return group

    return wrap


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Let a click command be an `async def`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio

        return asyncio.run(fn(*args, **kwargs))

    return wrapper
