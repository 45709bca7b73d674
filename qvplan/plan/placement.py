"""Helpers module templates call to place VMs from facts: `vms_on`, `free_memory`, `others`,
`place` (evacuate: most free memory first, CPU-compatible) and `rebalance` (even out memory use)."""

from __future__ import annotations

from typing import Any

from .checks import cpu_problem
from .facts import Facts


def _mem(vm: dict[str, Any]) -> int:
    m = vm.get("memory")
    return m if isinstance(m, int) and not isinstance(m, bool) else 0


class Helpers:
    def __init__(self, facts: Facts, hosts: list[str], cpu_policy: str = "strict") -> None:
        self.facts = facts
        self.hosts = hosts
        self.cpu_policy = cpu_policy

    def globals(self) -> dict[str, Any]:
        return {"vms_on": self.vms_on, "free_memory": self.free_memory, "others": self.others,
                "place": self.place, "rebalance": self.rebalance}

    def vms_on(self, host: str) -> list[dict[str, Any]]:
        """The VMs a host holds (not those already migrated away)."""
        vms = (self.facts.get(host) or {}).get("vms") or []
        return [v for v in vms if isinstance(v, dict) and isinstance(v.get("name"), str)
                and v.get("state") != "migrated"]

    def free_memory(self, host: str) -> int:
        free = ((self.facts.get(host) or {}).get("memory") or {}).get("free")
        return free if isinstance(free, int) else 0

    def _total(self, host: str) -> int:
        total = ((self.facts.get(host) or {}).get("memory") or {}).get("total")
        return total if isinstance(total, int) and total > 0 else 1

    def others(self, host: str) -> list[str]:
        return [h for h in (self.hosts or list(self.facts)) if h != host]

    def _host_of(self, name: str) -> str | None:
        for host in self.facts:
            if any(v.get("name") == name for v in self.vms_on(host)):
                return host
        return None

    def _compatible(self, vm: dict[str, Any], src: str | None, dst: str) -> bool:
        if src is None or src not in self.facts or dst not in self.facts:
            return True
        return cpu_problem(vm, self.facts[src], self.facts[dst], self.cpu_policy) is None

    @staticmethod
    def _entry(vm: dict[str, Any], host: str, extra: dict[str, Any] | None) -> dict[str, Any]:
        mode = "live" if vm.get("state") in ("running", "paused") else "offline"
        return {"host": host, "mode": mode, **(extra or {})}

    def place(self, vms: list[dict[str, Any]], targets: list[str],
              extra: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Biggest VM first onto the compatible target with the most free memory left. A VM that
        fits nowhere still gets a target, so its check fails visibly instead of it being dropped."""
        room = {t: self.free_memory(t) for t in targets}
        out: dict[str, dict[str, Any]] = {}
        for vm in sorted(vms, key=lambda v: (-_mem(v), str(v.get("name")))):
            src = self._host_of(vm["name"])
            pool = [t for t in targets if t != src]
            fits = [t for t in pool if self._compatible(vm, src, t)]
            ranked = sorted(fits or pool, key=lambda t: -room[t])
            if not ranked:
                continue
            best = next((t for t in ranked if room[t] >= _mem(vm)), ranked[0])
            room[best] -= _mem(vm)
            out[vm["name"]] = self._entry(vm, best, extra)
        return out

    def rebalance(self, hosts: list[str] | None = None, tolerance: float = 0.1,
                  extra: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Move running VMs, one at a time, between the pair of hosts (memory used / total) where
        that narrows their gap most, until every host is within `tolerance` of the others."""
        hosts = [h for h in (hosts or self.hosts or list(self.facts)) if h in self.facts]
        used = {h: self._total(h) - self.free_memory(h) for h in hosts}
        moved: dict[str, dict[str, Any]] = {}
        vms = {h: [v for v in self.vms_on(h) if v.get("state") == "running"] for h in hosts}

        def ratio(h: str) -> float:
            return used[h] / self._total(h)

        for _ in range(sum(len(v) for v in vms.values())):
            if len(hosts) < 2 or max(map(ratio, hosts)) - min(map(ratio, hosts)) <= tolerance:
                break
            best: tuple[float, str, str, dict[str, Any]] | None = None
            for src in hosts:
                for dst in hosts:
                    gap = ratio(src) - ratio(dst)
                    if gap <= tolerance:
                        continue
                    for vm in vms[src]:
                        m = _mem(vm)
                        if m > self._total(dst) - used[dst] or not self._compatible(vm, src, dst):
                            continue
                        new_gap = abs((used[src] - m) / self._total(src) - (used[dst] + m) / self._total(dst))
                        if gap - new_gap > 0 and (best is None or gap - new_gap > best[0]):
                            best = (gap - new_gap, src, dst, vm)
            if best is None:
                break
            _, src, dst, vm = best
            vms[src].remove(vm)
            used[src] -= _mem(vm)
            used[dst] += _mem(vm)
            moved[vm["name"]] = self._entry(vm, dst, extra)
        return moved
