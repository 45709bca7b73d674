"""The plan file's schema (pydantic). `qvplan schema` prints it as JSON Schema for editors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..errors import QVError
from ..inventory import HostEntry
from ..units import parse_duration, parse_size

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _units(fn: Any, value: Any, what: str, **kw: Any) -> Any:
    try:
        return fn(value, what, **kw)
    except QVError as err:  # pydantic reports ValueError with its location
        raise ValueError(str(err)) from None


class Flags(_Strict):
    """Migrate flags of the spec. Unset (None) means "inherit": VM → `defaults` → spec default."""

    pqc_kem: Literal["ML-KEM-768", "ML-KEM-1024"] | None = None
    bandwidth: int | None = Field(None, ge=0, description="bytes/s, e.g. 10G; 0 or 'unlimited' = unlimited")
    timeout: float | None = Field(None, gt=0, description="seconds, e.g. 600 or 10m")
    max_iterations: int | None = Field(None, ge=1, le=10000)
    max_downtime: float | None = Field(None, gt=0, description="seconds; a bare number is ms, e.g. 300ms")
    auto_converge: bool | None = None
    compress: bool | None = None
    threads: int | None = Field(None, ge=1, le=64)
    insecure: bool | None = Field(None, description="plaintext migration (refused where pqc_required)")

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _bandwidth(cls, v: Any) -> Any:
        if isinstance(v, str):
            return 0 if v.strip().lower() in ("unlimited", "0", "") else _units(parse_size, v, "bandwidth")
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return _units(parse_duration, v, "timeout") if isinstance(v, str) else v

    @field_validator("max_downtime", mode="before")
    @classmethod
    def _downtime(cls, v: Any) -> Any:
        if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            return _units(parse_duration, v, "max_downtime", default_unit="ms")
        return v


# The spec's defaults (its "Convergence & Downtime" table and the --timeout 600 example).
SPEC_DEFAULTS: dict[str, Any] = {
    "pqc_kem": "ML-KEM-768", "bandwidth": 0, "timeout": 600.0, "max_iterations": 30,
    "max_downtime": 0.3, "auto_converge": True, "compress": False, "threads": 4, "insecure": False,
}
FLAG_NAMES = tuple(SPEC_DEFAULTS)


class Trust(_Strict):
    """PQC trust between hosts: use what the hosts trust already, pin fingerprints, or exchange keys."""

    exchange: bool = Field(False, description="apply may exchange and import host keys where missing")
    pinned: dict[Name, str] = Field(default_factory=dict, description="host → expected fingerprint")


class Prerequisites(_Strict):
    version: Literal["same-major", "same-minor", "exact", "any"] = "same-major"
    cpu: Literal["strict", "vendor", "any"] = Field(
        "strict", description="strict: host model needs same vendor + superset of flags; vendor: only vendor")
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
        for name in FLAG_NAMES:
            value = getattr(layer, name)
            if value is not None:
                out[name] = value
    return out


def json_schema() -> dict[str, Any]:
    schema = PlanSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qvplan migration plan"
    return schema
