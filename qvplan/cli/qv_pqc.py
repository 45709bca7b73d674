"""`quantavirt pqc key-export|key-import|status`: this host's PQC identity and the peers it trusts."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from . import local

IDENTITY_KEY = "host-identity"


def _state(ctx: click.Context) -> Path:
    # Same directory the agent uses: --state-dir, else the config's [host] state_dir, else the default.
    return local.state_dir(ctx)


@click.group()
def pqc() -> None:
    """Host identity keys (ML-DSA-65) and the PQC trust store."""


@pqc.command("key-export")
@click.argument("key", metavar="KEY")
@click.option("--public", "public", is_flag=True, help="Export the public key (the only kind that leaves the host).")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="File to write ('-' for stdout).")
@click.pass_context
def key_export(ctx: click.Context, key: str, public: bool, output: str) -> None:
    """Export KEY (host-identity) as an armored ML-DSA-65 public key file."""
    from ..pqc import HostIdentity

    if key != IDENTITY_KEY:
        raise UsageError(f"unknown key {key!r}", f"the exportable key is {IDENTITY_KEY!r}")
    if not public:
        raise UsageError("only the public key can be exported", "add --public (the private key never leaves the host)")
    ident = HostIdentity.load_or_create(_state(ctx))
    text = ident.export_public()
    if output == "-":
        click.echo(text, nl=False)
        return
    Path(output).write_text(text, encoding="ascii")
    click.echo(f"Exported {IDENTITY_KEY} public key {ident.fingerprint} to {output}", err=True)


@pqc.command("key-import")
@click.option("--name", required=True, help="Name to trust the key as (usually the peer's host name).")
@click.option("--input", "-i", "input_", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Public key file made by 'quantavirt pqc key-export' ('-' for stdin).")
@click.option("--force", is_flag=True, help="Replace a different key already trusted under NAME.")
@click.pass_context
def key_import(ctx: click.Context, name: str, input_: str, force: bool) -> None:
    """Trust a peer host's public key under NAME; prints its fingerprint."""
    from ..pqc import TrustStore
    from ..pqc.keys import PUBLIC, dearmor

    try:
        with click.open_file(input_, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"cannot read {input_}: {err.strerror}", "check the path given to --input") from None
    source = "stdin" if input_ == "-" else input_
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""  # refused below with the same message as any other malformed file
    raw = dearmor(text, PUBLIC, source)
    fingerprint = TrustStore(_state(ctx)).add(name, raw, force=force)
    click.echo(f"Imported {name}: {fingerprint}")


@pqc.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show the active PQC provider, this host's identity and the trusted peers."""
    from ..pqc import HostIdentity, TrustStore, get_provider

    state = _state(ctx)
    ident = HostIdentity.load_or_create(state)
    entries = TrustStore(state).entries()
    click.echo(f"Provider:  {get_provider().name}")
    click.echo(f"Identity:  {ident.fingerprint} (ML-DSA-65)")
    click.echo("KEMs:      ML-KEM-768 (default), ML-KEM-1024")
    if not entries:
        click.echo("Trusted:   none — import peers with 'quantavirt pqc key-import --name NAME --input FILE'")
        return
    click.echo(f"Trusted:   {len(entries)} peer{'s' if len(entries) != 1 else ''}")
    width = max(len(name) for name, _ in entries)
    for name, fp in entries:
        click.echo(f"  {name:<{width}}  {fp}")
