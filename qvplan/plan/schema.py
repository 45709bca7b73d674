"""The plan file's schema (pydantic). `qvplan schema` prints it as JSON Schema for editors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..contract.flags import PLAN_FLAGS, SPEC_DEFAULTS, FlagOverrides
from ..contract.rules import Policies
from ..inventory import HostEntry

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The plan's migrate flags: the rule book's model, every field optional (None = inherit).
Flags = FlagOverrides


class Trust(_Strict):
    """PQC trust between hosts: use what the hosts trust already, pin fingerprints, or exchange keys."""

    exchange: bool = Field(False, description="apply may exchange and import host keys where missing")
    pinned: dict[Name, str] = Field(default_factory=dict, description="host → expected fingerprint")


class Prerequisites(Policies):
    """The rule book's policies (version, cpu), and where shared storage is."""

    shared_storage: list[str] = Field(default_factory=list, description="path prefixes on shared storage")


class Limits(_Strict):
    """How many migrations run at once (like KubeVirt's parallelMigrationsPerCluster/...PerNode)."""

    parallel: int = Field(5, ge=1, le=10000)
    per_host_outbound: int = Field(2, ge=1, le=10000)
    per_host_inbound: int = Field(2, ge=1, le=10000)


class Storage(_Strict):
    migrate: bool = False
    dest_pool: str | None = None


class Placement(Flags):
    """Where one VM should be, and how to get it there."""

    host: str = Field(pattern=NAME_PATTERN)
    mode: Literal["live", "offline"] = "live"
    storage: Storage = Field(default_factory=Storage)
    after: list[Name] = Field(default_factory=list, description="VMs whose moves must finish first")

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Use(_Strict):
    module: str = Field(pattern=NAME_PATTERN)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PlanSpec(_Strict):
    """A migration plan: hosts, how to trust them, what must hold, and where each VM should be."""

    description: str | None = None
    vars: dict[str, Any] | list[str] | None = Field(None, description="variable defaults or vars files")
    inventory: str | None = Field(None, description="inventory YAML: {hosts: {name: {address, ssh, migration}}}")
    hosts: dict[Name, HostEntry] = Field(default_factory=dict)
    trust: Trust = Field(default_factory=Trust)
    prerequisites: Prerequisites = Field(default_factory=Prerequisites)
    defaults: Flags = Field(default_factory=Flags)
    limits: Limits = Field(default_factory=Limits)
    on_failure: Literal["rollback", "rollback-all", "stop", "continue"] = "rollback"
    use: list[Use] = Field(default_factory=list)
    vms: dict[Name, Placement] = Field(default_factory=dict)

    @field_validator("vms", mode="before")
    @classmethod
    def _short_placement(cls, v: Any) -> Any:
        # `vms: {web-01: hv-b}` is `vms: {web-01: {host: hv-b}}`.
        if isinstance(v, dict):
            return {k: {"host": p} if isinstance(p, str) else p for k, p in v.items()}
        return v

    @field_validator("use", mode="before")
    @classmethod
    def _one_use(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v


def resolve_flags(defaults: Flags, vm: Flags) -> dict[str, Any]:
    """Spec defaults ← plan `defaults` ← the VM's own overrides, as a plain dict."""
    out = dict(SPEC_DEFAULTS)
    for layer in (defaults, vm):
        for name in PLAN_FLAGS:
            value = getattr(layer, name)
            if value is not None:
                out[name] = value
    return out


def json_schema() -> dict[str, Any]:
    schema = PlanSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qvplan migration plan"
    return schema
