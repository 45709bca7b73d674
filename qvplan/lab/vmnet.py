"""The lab's VM network (netns mode): one L2 segment for guests, apart from the management one.

    hv-a netns: vmbr0 ─ vmlink ══ <prefix>-w0 ┐
    hv-b netns: vmbr0 ─ vmlink ══ <prefix>-w1 ┼─ <prefix>-vm0 (root netns, no address)
    client netns: eth0 10.88.X.2 ══ <prefix>-wc ┘

VM taps join their host's `vmbr0` (the agent makes them inside the host's namespace), so a guest
that moves shows up behind another port of the segment, and its announcement (GARP/RARP) reaches
the client. Bridges skip the root namespace's iptables (nf_call_* off): lab traffic is not
subject to the machine's firewall. Every step checks before it acts.
"""

from __future__ import annotations

import json
from typing import Any

from .model import LabHost, LabSpec
from .net import link_exists, netns_list
from .procs import sh

HOST_BRIDGE = "vmbr0"
HOST_UPLINK = "vmlink"
NO_NETFILTER = ["nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"]


def _bridge(name: str, ns: list[str]) -> None:
    """Create bridge `name` (in namespace `ns`: ["-n", NS] or []) unless it exists; up, no STP wait."""
    if sh(["ip", *ns, "link", "show", "dev", name], check=False).returncode != 0:
        sh(["ip", *ns, "link", "add", name, "type", "bridge", "forward_delay", "0"])
    sh(["ip", *ns, "link", "set", "dev", name, "type", "bridge", *NO_NETFILTER], check=False)
    sh(["ip", *ns, "link", "set", name, "up"])


def setup(spec: LabSpec) -> None:
    """The segment bridge, each host's vmbr0 and its uplink, the client namespace."""
    _bridge(spec.vm_segment, [])
    for host in spec.all_hosts():
        assert host.netns and host.vm_uplink
        _bridge(HOST_BRIDGE, ["-n", host.netns])
        _veth(spec, host.vm_uplink, host.netns, HOST_UPLINK)
        sh(["ip", "-n", host.netns, "link", "set", HOST_UPLINK, "master", HOST_BRIDGE])
        sh(["ip", "-n", host.netns, "link", "set", HOST_UPLINK, "up"])
    if spec.client_netns not in netns_list():
        sh(["ip", "netns", "add", spec.client_netns])
    sh(["ip", "-n", spec.client_netns, "link", "set", "lo", "up"])
    _veth(spec, client_link(spec), spec.client_netns, "eth0")
    sh(["ip", "-n", spec.client_netns, "addr", "replace", f"{spec.client_address}/24", "dev", "eth0"])
    sh(["ip", "-n", spec.client_netns, "link", "set", "eth0", "up"])


def client_link(spec: LabSpec) -> str:
    return f"{spec.prefix}-wc"


def _veth(spec: LabSpec, root_end: str, netns: str, inner: str) -> None:
    if not link_exists(root_end):
        sh(["ip", "link", "add", root_end, "type", "veth", "peer", "name", inner, "netns", netns])
    sh(["ip", "link", "set", root_end, "master", spec.vm_segment])
    sh(["ip", "link", "set", root_end, "up"])


def teardown(spec: LabSpec) -> None:
    """Remove the client namespace, the uplinks and the segment bridge (host namespaces go with
    their own teardown, taking vmbr0 along)."""
    for root_end in [h.vm_uplink for h in spec.all_hosts() if h.vm_uplink] + [client_link(spec)]:
        if link_exists(root_end):
            sh(["ip", "link", "del", root_end], check=False)
    if spec.client_netns in netns_list():
        sh(["ip", "netns", "del", spec.client_netns], check=False)
    if link_exists(spec.vm_segment):
        sh(["ip", "link", "del", spec.vm_segment], check=False)


def fdb(host: LabHost | None, bridge: str, mac: str) -> list[str]:
    """The ports where `bridge` (in `host`'s namespace, or the root one) learned `mac`."""
    ns = ["-n", host.netns] if host is not None and host.netns else []
    out = sh(["bridge", *ns, "-j", "fdb", "show", "br", bridge], check=False).stdout
    try:
        entries: list[dict[str, Any]] = json.loads(out or "[]")
    except ValueError:
        return []
    return [str(e.get("ifname")) for e in entries if str(e.get("mac", "")).lower() == mac.lower()
            and "permanent" not in (e.get("state") or "")]


def describe(spec: LabSpec) -> str:
    """One line for `qvplan lab status`."""
    if spec.mode != "netns":
        return "VM network: none (loopback lab)"
    up = link_exists(spec.vm_segment) and spec.client_netns in netns_list()
    return (f"VM network: {spec.vm_subnet}.0/24 on {spec.vm_segment} ({'up' if up else 'missing'}), "
            f"bridge {HOST_BRIDGE} on every host, client netns {spec.client_netns} at {spec.client_address}")
