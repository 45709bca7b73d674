"""Host facts: what each host says at GET /api/v1/host, and where qvplan gets them from.

A facts dict is `{host_name: facts_json}`. Gathering may add, per host, `storage_checks`
(`{path: bool}`: can this host reach the path) and `reachable` (`{other_host: bool}`: can this host
open the other's migration port). A recorded facts file is JSON or YAML:
`{"hosts": {name: facts}, "gathered_at": "..."}` (a bare `{name: facts}` is accepted too).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..errors import QVError

Facts = dict[str, dict[str, Any]]


class FactsError(QVError):
    """Facts that cannot be read or gathered."""


@dataclass
class FactsDoc:
    hosts: Facts
    gathered_at: str | None = None
    source: str = "recorded"


class FactsSource(Protocol):
    """Anything that yields facts for a plan's hosts: a recorded file, or live gathering."""

    def __call__(self, hosts: dict[str, dict[str, Any]]) -> FactsDoc: ...


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_facts(data: Any, origin: str) -> FactsDoc:
    if not isinstance(data, dict):
        raise FactsError(f"{origin}: facts must be a mapping", 'write {"hosts": {name: facts}}')
    hosts = data.get("hosts", data) if "hosts" in data else data
    if not isinstance(hosts, dict) or not all(isinstance(v, dict) for v in hosts.values()):
        raise FactsError(f"{origin}: facts must map host names to GET /api/v1/host documents",
                         'write {"hosts": {"hv-a": {...}, ...}}')
    hosts = {str(k): v for k, v in hosts.items()}
    gathered = data.get("gathered_at") if "hosts" in data else None
    return FactsDoc(hosts, str(gathered) if gathered is not None else None, origin)


def load_facts(path: str | Path) -> FactsDoc:
    """A recorded facts file (JSON or YAML)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise FactsError(f"cannot read facts file {p}: {err.strerror}",
                         "record facts with `qvplan facts --out FILE`") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise FactsError(f"facts file {p} is not valid JSON/YAML: {str(err).splitlines()[0]}",
                         "record it again with `qvplan facts --out FILE`") from None
    return parse_facts(data, str(p))


def save_facts(path: str | Path, facts: Facts, gathered_at: str | None = None) -> Path:
    """Write recorded facts as JSON (the `qvplan facts --out FILE` format)."""
    p = Path(path)
    doc = {"gathered_at": gathered_at or now(), "hosts": facts}
    p.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return p


def live_facts(hosts: dict[str, dict[str, Any]], storage_paths: list[str] | None = None) -> FactsDoc:
    """Gather facts over SSH with `qvplan.remote.gather_facts` (imported lazily: plan works without it).

    `hosts` maps host name → {address, ssh: {user, port, key, known_hosts}, migration, api};
    `storage_paths` are checked from every host (the plan's shared storage prefixes).
    """
    try:
        from ..remote import HostTarget, gather_facts
    except ImportError:
        raise FactsError("live facts need qvplan.remote",
                         "pass recorded facts with --facts FILE until qvplan.remote is installed") from None
    targets = {name: HostTarget.from_dict(name, drop_none(h)) for name, h in hosts.items()}
    result = gather_facts(targets, storage_paths=list(storage_paths or []))
    found, errors = asyncio.run(result) if inspect.isawaitable(result) else result  # type: ignore[misc]
    if errors:
        cause, _, fix = next(iter(errors.values())).partition(" — ")
        raise FactsError(f"cannot gather facts of {len(errors)} host(s): {cause}",
                         fix or "check the hosts are up (`qvplan lab status`), or plan from --facts FILE")
    return FactsDoc(dict(found), now(), "live")


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


# Fields that change on their own (free memory, pids, counters) are left out of the hash so that a
# plan made a minute ago is not "stale" for that; apply re-checks them per move anyway.
def canonical(facts: Facts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in sorted(facts.items()):
        f = f if isinstance(f, dict) else {}
        pqc = f.get("pqc") or {}
        cpu = f.get("cpu") or {}
        out[name] = {
            "name": f.get("name"),
            "version": f.get("version"),
            "cpu": {"vendor": cpu.get("vendor"), "flags": sorted(cpu.get("flags") or []),
                    "qemu_host_features": sorted(cpu.get("qemu_host_features") or [])},
            "memory_total": (f.get("memory") or {}).get("total"),
            "pqc": {"fingerprint": pqc.get("fingerprint"), "trusted": pqc.get("trusted") or {}},
            "migration": f.get("migration") or {},
            "storage_checks": f.get("storage_checks") or {},
            "reachable": f.get("reachable") or {},
            "vms": sorted(
                ({"name": v.get("name"), "state": v.get("state"), "memory": v.get("memory"),
                  "cpu": v.get("cpu"), "disks": [d.get("path") for d in v.get("disks") or []]}
                 for v in f.get("vms") or [] if isinstance(v, dict)),
                key=lambda v: str(v["name"])),
        }
    return out


def facts_hash(facts: Facts) -> str:
    """sha256 of the canonical facts (sorted keys, no whitespace)."""
    blob = json.dumps(canonical(facts), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def identity(facts: Facts) -> dict[str, Any]:
    """Which hosts these are: names and host-key fingerprints."""
    return {name: (f.get("pqc") or {}).get("fingerprint") for name, f in sorted(facts.items())}
