"""How to reach a host: one model for the inventory file, a plan's `hosts:`, and apply's SSH targets.

```yaml
hosts:
  hv-a:
    address: 10.77.0.11
    ssh: {user: root, port: 22, key: /run/qvplan-lab/id_ed25519, known_hosts: /run/qvplan-lab/known_hosts}
    migration: "10.77.0.11:9410"
    api: "127.0.0.1:9400"          # optional: the agent's read-only API as seen on the host itself
    control: /run/quantavirt/api.sock  # optional: its control socket, which qvplan reaches over SSH
```
`known_hosts` is a file (strict host key checking against it), `none` (no checking: labs only),
or absent (the user's ~/.ssh/known_hosts, strict). Relative paths are relative to the inventory
(or the plan) that names them.

`HostEntry` is one entry (the plan schema's `hosts:` values); `HostTarget` is an entry with its
name, which `qvplan.remote` connects to. `read_inventory` reads a file into entries and reports
every bad entry; `load_inventory` is its one-line-error form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .contract.ports import API_LISTEN, CONTROL_SOCKET, MIGRATION_PORT
from .errors import UsageError


class SSHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = "root"
    port: int = Field(default=22, gt=0, lt=65536)
    key: str | None = None
    known_hosts: str | None = Field(None, description="file, or 'none' (labs only); default ~/.ssh/known_hosts")
    connect_timeout: float = Field(default=10.0, gt=0)

    @property
    def host_key_checking(self) -> bool:
        return (self.known_hosts or "").lower() != "none"


class HostEntry(BaseModel):
    """How to reach one host: its address for SSH and, optionally, its migration endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=1)
    ssh: SSHOptions = Field(default_factory=SSHOptions)
    migration: str | None = Field(None, description=f"host:port peers use for migration "
                                                    f"(default address:{MIGRATION_PORT})")
    api: str = Field(API_LISTEN, description="the agent's read-only API as seen on the host itself")
    control: str = Field(CONTROL_SOCKET, pattern=r"^/", description="the agent's control socket on the host")

    @property
    def migration_address(self) -> str:
        """HOST:PORT of the migration listener as other hosts reach it."""
        return self.migration or f"{self.address}:{MIGRATION_PORT}"

    @property
    def ssh_address(self) -> str:
        return f"{self.address}:{self.ssh.port}"

    def relative_to(self, base: Path) -> HostEntry:
        """This entry with relative key / known_hosts paths taken from `base`."""
        update = {key: str(base / value) for key in ("key", "known_hosts")
                  if (value := getattr(self.ssh, key)) and value.lower() != "none" and not Path(value).is_absolute()}
        return self.model_copy(update={"ssh": self.ssh.model_copy(update=update)}) if update else self


class HostTarget(HostEntry):
    """One host as the fleet side reaches it: an entry and its name."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")

    @classmethod
    def of(cls, name: str, entry: HostEntry) -> HostTarget:
        return cls.model_validate({"name": name, **entry.model_dump()})

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], base: Path | None = None) -> HostTarget:
        """Build a target from an inventory/plan entry; relative key paths are taken from `base`."""
        target = cls.model_validate({"name": name, **(data or {})})
        return target.relative_to(base) if base is not None else target  # type: ignore[return-value]


@dataclass(frozen=True)
class BadEntry:
    """One inventory entry that does not validate: where (`hosts.NAME.KEY`) and why."""

    key: str
    message: str


def read_inventory(path: str | Path) -> tuple[dict[str, HostEntry], list[BadEntry]]:
    """An inventory file's entries (paths resolved beside it) and every entry that is wrong.

    A file that cannot be read or has no `hosts:` mapping raises `UsageError`.
    """
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as err:
        raise UsageError(f"cannot read inventory {file}: {err.strerror}",
                         "run `qvplan lab up`, or pass the inventory's path") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{file}: not valid YAML: {str(err).splitlines()[0]}", "fix the syntax") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict) or not hosts:
        raise UsageError(f"{file}: no `hosts:` mapping", "list hosts as `hosts: {NAME: {address: ...}}`")
    entries: dict[str, HostEntry] = {}
    bad: list[BadEntry] = []
    for name, entry in hosts.items():
        try:
            target = HostTarget.from_dict(str(name), entry or {}, base=file.parent)  # the name checked too
            entries[str(name)] = HostEntry.model_validate(target.model_dump(exclude={"name"}))
        except ValidationError as err:
            first = err.errors()[0]
            bad.append(BadEntry(".".join(["hosts", str(name), *(str(p) for p in first["loc"])]), first["msg"]))
    return entries, bad


def load_inventory(path: str | Path) -> dict[str, HostTarget]:
    """Read an inventory file into {name: HostTarget}; any problem is one line naming the key."""
    entries, bad = read_inventory(path)
    if bad:
        raise UsageError(f"{path}: {bad[0].key}: {bad[0].message}", "fix that key")
    return {name: HostTarget.of(name, entry) for name, entry in entries.items()}


def dump_inventory(targets: dict[str, HostTarget]) -> str:
    """The YAML text of an inventory (what `qvplan lab up` writes)."""
    hosts = {name: t.model_dump(exclude={"name"}, exclude_defaults=False) for name, t in targets.items()}
    for entry in hosts.values():
        entry["ssh"].pop("connect_timeout", None)
        if entry.get("api") == API_LISTEN:
            entry.pop("api")
        if entry.get("control") == CONTROL_SOCKET:
            entry.pop("control")
    return yaml.safe_dump({"hosts": hosts}, sort_keys=False)
