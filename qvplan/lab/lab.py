"""`Lab`: bring a multi-host lab up, down, report on it, and inject faults into it."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..remote import AgentError, HostConnection, HostTarget, RemoteError, SSHOptions, dump_inventory
from . import agents, images, net, sshd, vmnet
from .model import LabError, LabHost, LabSpec, Mode, default_lab_dir, default_mode
from .procs import descendants, kill_all

TEST_VM = {"memory": "128M", "vcpus": 1, "guest": {"test": {"working_set": "16M"}}}


@dataclass
class HostStatus:
    name: str
    address: str
    sshd: bool
    agent: bool                 # the process runs
    api: bool | None = None     # the API answers over SSH (None: not asked)
    vms: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class Lab:
    """A lab in `dir` (default /run/qvplan-lab as root, else $XDG_RUNTIME_DIR/qvplan-lab).

    `Lab(...)` describes one; `up()` makes it real, `down()` removes all of it. `Lab.load(dir)`
    reopens the lab a previous `up()` left (its shape is in dir/lab.json).
    """

    def __init__(self, dir: str | Path | None = None, *, hosts: int = 3, prefix: str = "qvlab",
                 mode: Mode | None = None, subnet: str = "", agents: bool = True) -> None:
        path = Path(dir) if dir else default_lab_dir()
        mode = mode or default_mode()
        if mode == "netns" and os.geteuid() != 0:
            raise LabError("a netns lab needs root", "run as root, or use the loopback lab")
        user = "root" if os.geteuid() == 0 else getpass.getuser()
        self.spec = LabSpec(str(path.resolve()), prefix, hosts, mode, subnet, user)
        self.with_agents = agents

    @classmethod
    def load(cls, dir: str | Path | None = None) -> Lab:
        spec = LabSpec.load(Path(dir) if dir else default_lab_dir())
        lab = cls.__new__(cls)
        lab.spec, lab.with_agents = spec, True
        return lab

    @property
    def dir(self) -> Path:
        return self.spec.path

    @property
    def hosts(self) -> list[LabHost]:
        return self.spec.all_hosts()

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name!r} in the lab at {self.dir}",
                       f"hosts are {', '.join(self.spec.host_names())}")

    @property
    def inventory_path(self) -> Path:
        return self.spec.inventory

    # -- up / down ---------------------------------------------------------------------------

    def up(self) -> Path:
        """Create (or complete) the lab: network, keys, sshd, agents, inventory. Idempotent."""
        if self.spec.state_file.exists():
            old = LabSpec.load(self.dir)
            if (old.prefix, old.hosts, old.mode, old.subnet) != (self.spec.prefix, self.spec.hosts,
                                                                 self.spec.mode, self.spec.subnet):
                raise LabError(f"the lab at {self.dir} has another shape ({old.hosts} hosts, {old.mode}, "
                               f"prefix {old.prefix})", "take it down first: qvplan lab down")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec.save()  # first: a failed `up` can still be taken down
        if self.spec.mode == "netns":
            net.setup_bridge(self.spec)
            for host in self.hosts:
                net.setup_host(self.spec, host)
            vmnet.setup(self.spec)
        images.install(self.spec)
        for host in self.hosts:
            host.path.mkdir(parents=True, exist_ok=True)
            sshd.keygen(host.file("ssh_host_ed25519_key"), f"{host.name}-host")
        sshd.client_files(self.spec)
        for host in self.hosts:
            sshd.start(self.spec, host)
        if self.with_agents:
            for host in self.hosts:
                agents.start(host)
        text = dump_inventory(self.targets())
        if not self.inventory_path.exists() or self.inventory_path.read_text() != text:
            self.inventory_path.write_text(text)
        return self.inventory_path

    def down(self) -> bool:
        """Remove everything `up` made: processes, namespaces, links, files. False if no lab."""
        if not self.spec.state_file.exists():
            return False
        spec = LabSpec.load(self.dir)
        hosts = spec.all_hosts()
        pids: set[int] = set()
        for host in hosts:
            pids |= agents.owned_pids(host)
            if host.netns and host.netns in net.netns_list():
                pids |= net.netns_pids(host.netns)
        pids |= descendants(pids)  # e.g. shells and agents started through sshd (loopback mode)
        if spec.client_netns in net.netns_list():
            pids |= net.netns_pids(spec.client_netns)  # captures and clients left in it
        kill_all(pids)
        if spec.mode == "netns":
            vmnet.teardown(spec)
        net.teardown(spec, hosts)
        for host in hosts:
            shutil.rmtree(host.path, ignore_errors=True)
        for file in (spec.key, spec.key.with_suffix(".pub"), spec.known_hosts, spec.authorized_keys,
                     spec.inventory, spec.state_file):
            file.unlink(missing_ok=True)
        images.remove(spec)
        try:
            self.dir.rmdir()  # only if empty: never remove files we did not make
        except OSError:
            pass
        return True

    # -- reaching the hosts ------------------------------------------------------------------

    def target(self, host: LabHost) -> HostTarget:
        ssh = SSHOptions(user=self.spec.user, port=host.ssh_port, key=str(self.spec.key),
                         known_hosts=str(self.spec.known_hosts), connect_timeout=5)
        return HostTarget(name=host.name, address=host.address, ssh=ssh, migration=host.migration, api=host.api,
                          control=host.control)

    def targets(self) -> dict[str, HostTarget]:
        return {h.name: self.target(h) for h in self.hosts}

    def connect(self, name: str) -> HostConnection:
        """An (unconnected) SSH connection to a lab host: `async with lab.connect("hv-a") as c:`."""
        return HostConnection(self.target(self.host(name)))

    async def wait_agents(self, timeout: float = 30.0) -> dict[str, str]:
        """Wait until every agent answers over SSH; {host: error} for those that do not."""
        async def one(host: LabHost) -> str | None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            async with self.connect(host.name) as conn:
                while True:
                    try:
                        await conn.api("GET", "host", timeout=5)
                        return None
                    except (RemoteError, AgentError) as err:
                        if agents.pid(host) is None:
                            return f"{host.name}: the agent exited: {agents.log_tail(host)} " \
                                   f"(log {host.file('agent.log')})"
                        if loop.time() > deadline:
                            return f"{host.name}: {err}"
                    await asyncio.sleep(0.2)

        results = await asyncio.gather(*(one(h) for h in self.hosts), return_exceptions=True)
        return {h.name: str(r) for h, r in zip(self.hosts, results, strict=True) if r is not None}

    async def create_vms(self, count: int = 4) -> list[str]:
        """Define and start test guests vm-1..vm-N (vm-1, vm-2 on the first host, then one per
        host round-robin); VMs that exist anywhere in the lab are left alone. Returns new names."""
        conns = {h.name: self.connect(h.name) for h in self.hosts}
        made: list[str] = []
        try:
            for conn in conns.values():
                await conn.connect()
            existing: dict[str, str] = {}
            for conn in conns.values():
                for vm in await conn.api("GET", "vms"):
                    if vm.get("state") != "migrated":
                        existing[vm["name"]] = vm.get("state", "")
            names = self.spec.host_names()
            for k in range(1, count + 1):
                vm_name = f"vm-{k}"
                conn = conns[names[max(0, k - 2) % len(names)]]
                if vm_name not in existing:
                    await conn.api("POST", "vms", {"name": vm_name, **TEST_VM})
                    made.append(vm_name)
                if existing.get(vm_name) in (None, "defined"):
                    await conn.api("POST", f"vms/{vm_name}/start", {}, timeout=120)
        finally:
            for conn in conns.values():
                await conn.close()
        return made

    async def exchange_trust(self) -> None:
        """Make every agent trust every other one's PQC identity (plans normally do this)."""
        conns = [self.connect(h.name) for h in self.hosts]
        try:
            for conn in conns:
                await conn.connect()
            idents = {c.name: await c.api("GET", "pqc/identity") for c in conns}
            for conn in conns:
                for peer, ident in idents.items():
                    if peer != conn.name:
                        await conn.api("POST", "pqc/trust", {"name": peer, "public_key": ident["public_key"],
                                                             "fingerprint": ident["fingerprint"]})
        finally:
            for conn in conns:
                await conn.close()

    # -- status ------------------------------------------------------------------------------

    async def status(self, ask_agents: bool = True) -> list[HostStatus]:
        out = [HostStatus(h.name, h.address, sshd.pid(h) is not None, agents.pid(h) is not None)
               for h in self.hosts]
        if not ask_agents:
            return out

        async def ask(st: HostStatus) -> None:
            try:
                async with self.connect(st.name) as conn:
                    st.vms = list(await conn.api("GET", "vms", timeout=10))
                    st.api = True
            except (RemoteError, AgentError) as err:
                st.api, st.error = False, str(err)

        await asyncio.gather(*(ask(st) for st in out if st.sshd))
        return out

    # -- faults ------------------------------------------------------------------------------

    def link_down(self, name: str) -> None:
        net.set_link(self.host(name), up=False)

    def link_up(self, name: str) -> None:
        net.set_link(self.host(name), up=True)

    def netem(self, name: str, spec: str | None) -> None:
        net.set_netem(self.host(name), spec)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> bool:
        return agents.kill(self.host(name), sig)

    def start_agent(self, name: str, env: dict[str, str] | None = None) -> int:
        return agents.start(self.host(name), env)

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """argv run in the client namespace on the VM network (netns mode)."""
        if self.spec.mode != "netns":
            raise LabError("the lab's VM network needs a netns lab", "run the lab as root")
        return ["ip", "netns", "exec", self.spec.client_netns, *argv]

    def exec_in(self, name: str, argv: Sequence[str], *, check: bool = False,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv on a lab host (inside its namespace in netns mode)."""
        host = self.host(name)
        full = ["ip", "netns", "exec", host.netns, *argv] if host.netns else list(argv)
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=timeout)
