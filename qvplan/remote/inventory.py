"""How to reach a host: the inventory file (YAML) and the per-host target it holds.

```yaml
hosts:
  hv-a:
    address: 10.77.0.11
    ssh: {user: root, port: 22, key: /run/qvplan-lab/id_ed25519, known_hosts: /run/qvplan-lab/known_hosts}
    migration: "10.77.0.11:9410"
    api: "127.0.0.1:9400"          # optional: the agent API as seen on the host itself
```
`known_hosts` is a file (strict host key checking against it), `none` (no checking: labs only),
or absent (the user's ~/.ssh/known_hosts, strict). Relative paths are relative to the inventory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..contract.ports import API_LISTEN, MIGRATION_PORT
from ..errors import UsageError


class SSHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = "root"
    port: int = Field(default=22, gt=0, lt=65536)
    key: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0)

    @property
    def host_key_checking(self) -> bool:
        return (self.known_hosts or "").lower() != "none"

class HostTarget(BaseModel):
    """One host as the fleet side reaches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    address: str
    ssh: SSHOptions = Field(default_factory=SSHOptions)
    migration: str | None = None
    api: str = API_LISTEN

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], base: Path | None = None) -> HostTarget:
        """Build a target from an inventory/plan entry; relative key paths are taken from `base`."""
        data = dict(data or {})
        ssh = dict(data.get("ssh") or {})
        for key in ("key", "known_hosts"):
            value = ssh.get(key)
            if base is not None and value and value.lower() != "none" and not Path(value).is_absolute():
                ssh[key] = str(base / value)
        data["ssh"] = ssh
        return cls.model_validate({"name": name, **data})

    @property
    def migration_address(self) -> str:
        """HOST:PORT of the migration listener as other hosts reach it."""
        return self.migration or f"{self.address}:{MIGRATION_PORT}"

    @property
    def ssh_address(self) -> str:
        return f"{self.address}:{self.ssh.port}"

def load_inventory(path: str | Path) -> dict[str, HostTarget]:
    """Read an inventory file into {name: HostTarget}; any problem is one line naming the key."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as err:
        raise UsageError(f"cannot read inventory {file}: {err.strerror}", "pass --inventory FILE") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{file}: not valid YAML: {str(err).splitlines()[0]}", "fix the syntax") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict) or not hosts:
        raise UsageError(f"{file}: no `hosts:` mapping", "list hosts as `hosts: {NAME: {address: ...}}`")
    targets: dict[str, HostTarget] = {}
    for name, entry in hosts.items():
        try:
            targets[str(name)] = HostTarget.from_dict(str(name), entry or {}, base=file.parent)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"{file}: hosts.{name}.{key}: {first['msg']}", "fix that key") from None
    return targets

def dump_inventory(targets: dict[str, HostTarget]) -> str:
    """The YAML text of an inventory (what `qvplan lab up` writes)."""
    hosts = {name: t.model_dump(exclude={"name"}, exclude_defaults=False) for name, t in targets.items()}
    for entry in hosts.values():
        entry["ssh"].pop("connect_timeout", None)
        if entry.get("api") == API_LISTEN:
            entry.pop("api")
    return yaml.safe_dump({"hosts": hosts}, sort_keys=False)
