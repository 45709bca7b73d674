"""The lab's network: bridge, namespaces and veth links (netns mode); faults on those links.

Every step checks before it acts, so running it twice changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
import time

from .model import LabError, LabHost, LabSpec
from .procs import sh


def netns_list() -> set[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    return sh(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _subnet_users(spec: LabSpec) -> list[str]:
    """Interfaces other than our bridge that already carry an address in the lab's subnet."""
    net = ipaddress.ip_network(f"{spec.subnet}.0/24")
    data = json.loads(sh(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    return [i["ifname"] for i in data if i["ifname"] != spec.bridge
            and any(ipaddress.ip_address(a["local"]) in net for a in i.get("addr_info", []))]


def setup_bridge(spec: LabSpec) -> None:
    if not link_exists(spec.bridge):
        if users := _subnet_users(spec):
            raise LabError(f"subnet {spec.subnet}.0/24 is already used by {', '.join(users)}",
                           "pick another one (Lab(subnet=...)) or take that lab down first")
        sh(["ip", "link", "add", spec.bridge, "type", "bridge"])
    sh(["ip", "addr", "replace", f"{spec.gateway}/24", "dev", spec.bridge])
    sh(["ip", "link", "set", spec.bridge, "up"])


def setup_host(spec: LabSpec, host: LabHost) -> None:
    assert host.netns and host.veth
    if host.netns not in netns_list():
        sh(["ip", "netns", "add", host.netns])
    sh(["ip", "-n", host.netns, "link", "set", "lo", "up"])
    if not link_exists(host.veth):
        sh(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
    sh(["ip", "link", "set", host.veth, "master", spec.bridge])
    sh(["ip", "link", "set", host.veth, "up"])
    sh(["ip", "-n", host.netns, "addr", "replace", f"{host.address}/24", "dev", "eth0"])
    sh(["ip", "-n", host.netns, "link", "set", "eth0", "up"])


def teardown(spec: LabSpec, hosts: list[LabHost]) -> None:
    """Remove the namespaces, links and bridge of this lab (processes must be gone first)."""
    present = netns_list()
    for host in hosts:
        if host.veth and link_exists(host.veth):
            sh(["ip", "link", "del", host.veth], check=False)
        if host.netns and host.netns in present:
            sh(["ip", "netns", "del", host.netns], check=False)
    if spec.mode == "netns" and link_exists(spec.bridge):
        sh(["ip", "link", "del", spec.bridge], check=False)


def netns_pids(netns: str) -> set[int]:
    out = sh(["ip", "netns", "pids", netns], check=False).stdout
    return {int(p) for p in out.split() if p.isdigit()}


def wait_tcp(address: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _need_netns(host: LabHost, what: str) -> str:
    if not host.netns or not host.veth:
        raise LabError(f"{what} needs a netns lab; {host.name} is a loopback address",
                       "run the lab as root (netns mode) for network faults")
    return host.netns


def set_link(host: LabHost, up: bool) -> None:
    _need_netns(host, "link_down/link_up")
    sh(["ip", "link", "set", host.veth or "", "up" if up else "down"])


def _qdisc(spec: str) -> list[str]:
    """A netem spec as tc arguments. A bare `rate R` becomes a tbf when the kernel lacks netem."""
    words = shlex.split(spec)
    if len(words) == 2 and words[0] == "rate" and not netem_supported():
        return ["tbf", "rate", words[1], "burst", "64kb", "latency", "400ms"]
    if not netem_supported():
        raise LabError("this kernel has no netem qdisc (sch_netem), so delay/loss cannot be injected",
                       "load sch_netem (modprobe) or use a bare `rate R` spec (tbf)")
    return ["netem", *words]


_NETEM: bool | None = None


def netem_supported() -> bool:
    """Whether `tc ... netem` works here (probed once on a throwaway dummy link)."""
    global _NETEM
    if _NETEM is None:
        probe = f"qvnetem{os.getpid() % 100000}"
        sh(["ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "p"], check=False)
        try:
            _NETEM = sh(["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"],
                        check=False).returncode == 0
        finally:
            sh(["ip", "link", "del", probe], check=False)
    return _NETEM


def set_netem(host: LabHost, spec: str | None) -> None:
    """Apply `tc netem` (e.g. "delay 50ms loss 1%") on both ends of the host's link; None clears."""
    ns = _need_netns(host, "netem")
    args = _qdisc(spec) if spec else []
    for prefix, dev in ((["ip", "netns", "exec", ns], "eth0"), ([], host.veth or "")):
        if args:
            sh([*prefix, "tc", "qdisc", "replace", "dev", dev, "root", *args])
        else:
            sh([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
