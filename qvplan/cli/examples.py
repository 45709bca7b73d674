"""One example per command, shown at the end of its `--help` (click's epilog).

Kept in one table so every command has one and a test holds them to it (a command with its own
epilog keeps it). `attach` walks the commands a group has registered (it imports nothing); a
lazy group (cli/common.py) calls it for each command it loads.
"""

from __future__ import annotations

import click

EXAMPLES: dict[str, str] = {
    "qvplan": "qvplan plan plans/demo.yaml && qvplan apply plans/demo.yaml --report report/",
    "qvplan lab": "qvplan lab up --hosts 3",
    "qvplan lab up": "qvplan lab up --hosts 3",
    "qvplan lab down": "qvplan lab down",
    "qvplan lab status": "qvplan lab status",
    "qvplan facts": "qvplan facts --inventory /run/qvplan-lab/inventory.yaml --out facts.json",
    "qvplan validate": "qvplan validate plans/demo.yaml --var inventory=/run/qvplan-lab/inventory.yaml",
    "qvplan plan": "qvplan plan plans/demo.yaml --target vm-3 -out demo.json",
    "qvplan show": "qvplan show demo.json",
    "qvplan schema": "qvplan schema > plan.schema.json",
    "qvplan apply": "qvplan apply plans/demo.yaml --limit hv-b --auto-approve --report report/",
    "quantavirt": "quantavirt vm migrate web-01 --dest 10.0.0.12:9410 --pqc",
    "quantavirt agent": "quantavirt --config /etc/quantavirt/quantavirt.conf agent --log-level info",
    "quantavirt pqc": "quantavirt pqc status",
    "quantavirt pqc key-export": "quantavirt pqc key-export host-identity --public --output hv-a.pub",
    "quantavirt pqc key-import": "quantavirt pqc key-import --name hv-b --input hv-b.pub",
    "quantavirt pqc status": "quantavirt pqc status",
    "quantavirt vm": "quantavirt vm list",
    "quantavirt vm define": "quantavirt vm define web-01.yaml",
    "quantavirt vm start": "quantavirt vm start web-01",
    "quantavirt vm stop": "quantavirt vm stop web-01",
    "quantavirt vm undefine": "quantavirt vm undefine web-01",
    "quantavirt vm list": "quantavirt vm list",
    "quantavirt vm show": "quantavirt vm show web-01",
    "quantavirt vm migrate": "quantavirt vm migrate web-01 --dest 10.0.0.12:9410 --pqc --bandwidth 1G",
    "quantavirt vm migrate-status": "quantavirt vm migrate-status web-01 --plot web-01.svg",
    "quantavirt vm migrate-cancel": "quantavirt vm migrate-cancel web-01",
    "quantavirt vm migrate-settle": "quantavirt vm migrate-settle web-01 --resume-here",
    "quantavirt system": "quantavirt system ping --host 10.0.0.12:9410",
    "quantavirt system ping": "quantavirt system ping --host 10.0.0.12:9410",
    "quantavirt system storage-check": "quantavirt system storage-check --host 10.0.0.12:9410 --path /mnt/nfs/vms",
}


def attach(command: click.Command, path: str) -> None:
    """Give `command` and every subcommand it has registered its example (as the epilog)."""
    if not command.epilog and path in EXAMPLES:
        command.epilog = f"\b\nExample: {EXAMPLES[path]}"  # \b: click keeps the line whole
    if hasattr(command, "example_path"):  # a LazyGroup: it attaches each command as it loads it
        command.example_path = path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, f"{path} {name}")
