"""The agent's config file (TOML, the spec's format), strictly validated.

Unknown keys and bad values are refused at start with the file, key and reason.
"""

from __future__ import annotations

__all__ = ["AgentConfig", "ConfigError", "load_config", "split_hostport"]

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..addresses import split_hostport
from ..contract.ports import API_LISTEN, CONTROL_GROUP, MIGRATION_LISTEN
from ..paths import state_dir
from .configfile import ConfigError, default_socket, read, to_toml


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _hostport(value: str) -> str:
    split_hostport(value)
    return value


class HostSection(_Section):
    name: str = Field(default_factory=lambda: __import__("socket").gethostname(), pattern=r"^[A-Za-z0-9._-]+$")
    state_dir: str | None = None
    memory: str | None = None  # memory offered to VMs (e.g. "4G"); default: all of it


class ApiSection(_Section):
    """The agent's two doors: the read-only TCP API (`listen`) and the control socket (`socket`,
    mode 0660, owned by `group`) for everything that changes state."""

    listen: str = API_LISTEN
    socket: str = Field(default_factory=default_socket, pattern=r"^/")
    group: str = CONTROL_GROUP  # members may use the control socket; a missing group leaves it root's
    allow_monitor: bool = False  # HMP passthrough (POST …/monitor) for root on the control socket
    _check = field_validator("listen")(_hostport)


class MigrationSection(_Section):
    listen: str = MIGRATION_LISTEN
    advertise: str | None = None
    pqc_required: bool = True
    _check = field_validator("listen", "advertise")(lambda v: v if v is None else _hostport(v))


class StorageSection(_Section):
    pools: dict[str, str] = Field(default_factory=dict)
    shared: list[str] = Field(default_factory=list)


class AgentConfig(_Section):
    host: HostSection = Field(default_factory=HostSection)
    api: ApiSection = Field(default_factory=ApiSection)
    migration: MigrationSection = Field(default_factory=MigrationSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    source: str = Field(default="(defaults)", exclude=True)

    @property
    def api_address(self) -> tuple[str, int]:
        return split_hostport(self.api.listen)

    @property
    def migration_address(self) -> tuple[str, int]:
        return split_hostport(self.migration.listen)

    @property
    def advertised_migration(self) -> str:
        """The HOST:PORT peers use to reach this host's migration listener."""
        if self.migration.advertise:
            return self.migration.advertise
        host, port = self.migration_address
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def state_dir(self, override: str | None = None) -> Path:
        return state_dir(override or self.host.state_dir)

    def to_toml(self) -> str:
        """The config file that loads back into this config."""
        return to_toml(self.model_dump(mode="json", exclude_none=True))

    def pool_paths(self, override_state: str | None = None) -> dict[str, Path]:
        pools = {name: Path(p) for name, p in self.storage.pools.items()}
        pools.setdefault("default", self.state_dir(override_state) / "images")
        for path in pools.values():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new pool is private; QEMU gets fds
        return pools


def load_config(path: str | Path | None = None, *, required: bool = False) -> AgentConfig:
    """Read and validate the config; a missing default file means defaults unless `required`."""
    file, data = read(path, required=required)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{file}: [{key}] {reason}", "fix or remove that key") from None
    if file.exists():
        cfg.source = str(file)
    return cfg
