"""What every command shares: turning errors into one line, and finding state and config."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from ..errors import QVError

T = TypeVar("T")


def one_line(err: QVError) -> str:
    """`Error: cause — fix (reason: code)`: the code is what scripts and `--json` match on."""
    code = f" (reason: {err.code})" if err.code and err.code != "error" else ""
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


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Let a click command be an `async def`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
