"""The migrate flags of the spec, in one model shared by the CLI, the agent API and plans.

`MigrateFlags` is the whole set with the spec's defaults. A plan sets some of them in `defaults:`
and per VM; `FlagOverrides` is the same fields, each optional (None = inherit), with the same
types, bounds and units, derived from `MigrateFlags` so the two cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from ..errors import QVError
from ..units import parse_duration, parse_size

KEMS = ("ML-KEM-768", "ML-KEM-1024")
UNLIMITED = 0  # bandwidth 0 = unlimited (QEMU's own default is 128 MiB/s, so it must be set)
# QEMU's auto-converge throttles the vCPUs to THROTTLE_INITIAL % once the guest has dirtied more than
# half of what was sent in two sync periods (of at least 1 s), then raises it likewise up to THROTTLE_MAX %.
THROTTLE_INITIAL = 20  # QEMU's default cpu-throttle-initial
THROTTLE_MIN_INCREMENT = 10  # QEMU's default cpu-throttle-increment
THROTTLE_MAX = 99  # QEMU's default max-cpu-throttle
# --bandwidth with --storage-migrate: while memory and the disks' mirrors move together the disks
# get this share (they then carry only the guest's new writes); alone, before and at the
# switchover, the mirrors get all of it. Memory and disk never exceed --bandwidth together.
STORAGE_SHARE = 0.25


def _units(fn: Any, value: Any, what: str, **kw: Any) -> Any:
    try:
        return fn(value, what, **kw)
    except QVError as err:  # pydantic reports a ValueError with its location
        raise ValueError(str(err)) from None


def _bandwidth(v: Any) -> Any:
    if isinstance(v, str):
        return UNLIMITED if v.strip().lower() in ("unlimited", "0", "") else _units(parse_size, v, "bandwidth")
    return v


def _timeout(v: Any) -> Any:
    return _units(parse_duration, v, "timeout") if isinstance(v, str) else v


def _downtime(v: Any) -> Any:
    # A bare number is milliseconds, as the spec's "300ms" default reads.
    if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return _units(parse_duration, v, "max downtime", default_unit="ms")
    return v


def _cache(v: Any) -> Any:
    return _units(parse_size, v, "xbzrle cache") if isinstance(v, str) else v


Bandwidth = Annotated[int, BeforeValidator(_bandwidth),
                      Field(ge=0, description="bytes/s, e.g. 10G; 0 or 'unlimited' = unlimited")]
CacheSize = Annotated[int, BeforeValidator(_cache), Field(ge=0, description="bytes, e.g. 256M; 0 = xbzrle off")]
Timeout = Annotated[float, BeforeValidator(_timeout), Field(gt=0, description="seconds, e.g. 600 or 10m")]
Downtime = Annotated[float, BeforeValidator(_downtime),
                     Field(gt=0, description="seconds; a bare number is ms, e.g. 300ms")]


class MigrateFlags(BaseModel):
    """How to migrate one VM. Defaults are the spec's."""

    model_config = ConfigDict(extra="forbid")

    pqc_kem: Literal["ML-KEM-768", "ML-KEM-1024"] = "ML-KEM-768"
    bandwidth: Bandwidth = UNLIMITED
    timeout: Timeout = 600.0
    max_iterations: Annotated[int, Field(ge=1, le=10000)] = 30
    max_downtime: Downtime = 0.3
    auto_converge: bool = True
    compress: bool = False
    threads: Annotated[int, Field(ge=1, le=64)] = 4
    # Not in the spec (off by default): QEMU's xbzrle sends a page sent before as its XOR delta
    # against a cache of sent pages; one channel only (QEMU's multifd channels bypass xbzrle).
    xbzrle_cache: CacheSize = 0
    insecure: Annotated[bool, Field(description="plaintext migration (refused where pqc_required)")] = False
    storage_migrate: bool = False
    dest_pool: str | None = None
    delete_source_disks: bool = False
    offline: bool = False
    # The destination's name in the source's trust store: it must answer with that key, not just
    # any trusted one (migration/peer.py). Default: the entry named like --dest's host, if any.
    dest_host: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None
    # The key the destination must present, whatever its trust entry is called (qvplan apply sends
    # the one the destination's own agent reports over SSH). Wins over dest_host.
    dest_fingerprint: Annotated[str | None, Field(pattern=r"^SHA256:[A-Za-z0-9+/]{43}$")] = None

    @model_validator(mode="after")
    def _xbzrle_flags(self) -> MigrateFlags:
        if self.xbzrle_cache:
            if self.xbzrle_cache < 4096 or self.xbzrle_cache & (self.xbzrle_cache - 1):
                raise ValueError("--xbzrle-cache must be a power of two of at least 4K, e.g. 256M (QEMU's rule)")
            if self.compress:
                raise ValueError("--xbzrle-cache and --compress exclude each other (zstd runs on multifd "
                                 "channels, which bypass xbzrle): pick one")
            if "threads" in self.model_fields_set and self.threads > 1:
                raise ValueError("--xbzrle-cache needs one channel (QEMU's multifd channels bypass xbzrle): "
                                 "drop --threads or pass --threads 1")
            self.threads = 1  # the default 4 would make it multifd
        return self

    @model_validator(mode="after")
    def _storage_flags(self) -> MigrateFlags:
        if not (self.storage_migrate or self.offline):
            if self.dest_pool is not None:
                raise ValueError("--dest-pool needs --storage-migrate (or --offline)")
            if self.delete_source_disks:
                # On shared storage the "source" disk is the destination's disk too.
                raise ValueError("--delete-source-disks needs --storage-migrate (or --offline)")
        return self

    @property
    def storage_bandwidth(self) -> int:
        """bytes/s of the disk mirrors while memory moves too (0 = unlimited)."""
        return max(1, int(self.bandwidth * STORAGE_SHARE)) if self.bandwidth and self.storage_migrate else 0

    @property
    def memory_bandwidth(self) -> int:
        """bytes/s of QEMU's memory migration (0 = unlimited): what the disks leave of --bandwidth."""
        return self.bandwidth - self.storage_bandwidth if self.bandwidth else 0

    @property
    def multifd(self) -> bool:
        # zstd compression is a multifd feature, so --compress uses multifd even with one thread.
        return self.threads > 1 or self.compress

    @property
    def throttle_increment(self) -> int:
        """cpu-throttle-increment so auto-converge reaches full throttle in the first third of the budget.

        QEMU raises the throttle at most every second dirty-sync pass, from the third on (passes
        3, 5, 7, ...), counting only periods of at least 1 s (shorter passes merge into one, so
        live/source.py sends the next raise straight to the ceiling from pass max_iterations / 3
        on, or as soon as the guest outpaces pre-copy).
        With its default +10 % the 99 % ceiling takes 19 passes, so any smaller
        --max-iterations forces stop-and-copy (a long pause) before auto-converge has had its
        effect. The step is sized so 99 % is reached by pass max_iterations / 3, leaving two thirds
        of the budget for the shrinking passes, which can be slow: under TCG each sync waits for
        the vCPU to finish its throttle sleep (up to ~1 s at 99 %). Never gentler than QEMU's default.
        """
        steps = max(1, (self.max_iterations // 3 - 3) // 2)
        return max(THROTTLE_MIN_INCREMENT, math.ceil((THROTTLE_MAX - THROTTLE_INITIAL) / steps))

    def qemu_capabilities(self) -> list[dict[str, Any]]:
        caps = {
            "events": True,
            "auto-converge": self.auto_converge,
            "multifd": self.multifd,
            "pause-before-switchover": self.storage_migrate,
            "xbzrle": bool(self.xbzrle_cache),
        }
        return [{"capability": k, "state": v} for k, v in caps.items()]

    def qemu_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            # 1 TiB/s stands for "unlimited": QEMU has no unlimited value of its own.
            "max-bandwidth": self.memory_bandwidth or (1 << 40),
            "downtime-limit": max(1, int(self.max_downtime * 1000)),
        }
        if self.auto_converge:
            params["cpu-throttle-initial"] = THROTTLE_INITIAL
            params["cpu-throttle-increment"] = self.throttle_increment
        if self.xbzrle_cache:
            params["xbzrle-cache-size"] = self.xbzrle_cache
        if self.multifd:
            params["multifd-channels"] = self.threads
            params["multifd-compression"] = "zstd" if self.compress else "none"
        return params

    def summary(self) -> str:
        from ..units import format_duration, format_size

        bw = "unlimited" if not self.bandwidth else format_size(self.bandwidth) + "/s"
        enc = "plaintext (--insecure)" if self.insecure else self.pqc_kem
        return f"{enc}, {bw}, ≤{format_duration(self.max_downtime)}"


# The flags a plan sets per VM or in `defaults:` (storage and mode have their own keys there).
PLAN_FLAGS = ("pqc_kem", "bandwidth", "timeout", "max_iterations", "max_downtime", "auto_converge",
              "compress", "threads", "xbzrle_cache", "insecure")
SPEC_DEFAULTS: dict[str, Any] = {name: MigrateFlags.model_fields[name].default for name in PLAN_FLAGS}

FlagOverrides: type[BaseModel] = create_model(
    "FlagOverrides",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Migrate flags of the spec. Unset (None) means \"inherit\": VM → `defaults` → spec default.",
    **{name: (MigrateFlags.model_fields[name].rebuild_annotation() | None, None) for name in PLAN_FLAGS},
)
