"""What a lab is made of: its hosts, their names and addresses, and where its files live.

Two modes. `netns` (root): each host is a network namespace `<prefix>-<host>` whose `eth0` is
one end of a veth pair `<prefix>-v<i>`, the other end in the bridge `<prefix>-br0` (SUBNET.1) in
the root namespace; sshd on :22 and the agent API on 127.0.0.1:9400 inside. Apart from that
management network, a VM network: a bridge `vmbr0` in each host's namespace (VM taps join it),
linked by a veth `<prefix>-w<i>` to the segment bridge `<prefix>-vm0` in the root namespace, and
a client namespace `<prefix>-client` on it at 10.88.X.2 (X: the lab subnet's third octet). `loopback` (no
root): each host is an address 127.0.77.(10+i); sshd on that address, port 2200+(10+i), agent API
and migration bound to it.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..contract.ports import API_LISTEN, API_PORT, MIGRATION_LISTEN, MIGRATION_PORT
from ..errors import QVError

Mode = Literal["netns", "loopback"]
STATE_FILE = "lab.json"
MAX_HOSTS = 26


class LabError(QVError):
    pass


def default_lab_dir() -> Path:
    if env := os.environ.get("QVPLAN_LAB_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/qvplan-lab")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/qvplan-lab-{os.getuid()}"
    return Path(runtime) / "qvplan-lab"


def default_mode() -> Mode:
    return "netns" if os.geteuid() == 0 else "loopback"


@dataclass(frozen=True)
class LabHost:
    name: str
    index: int
    address: str
    ssh_port: int
    api: str                 # agent API, as seen on the host itself
    migration_listen: str
    migration: str           # advertised HOST:PORT of the migration listener
    dir: str                 # this host's files: sshd config/keys/pid, agent config/log/pid, state/
    netns: str | None = None
    veth: str | None = None  # root-namespace end of the host's link
    vm_uplink: str | None = None  # root-namespace end of the link from its VM bridge to the segment

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def control(self) -> str:
        """The agent's control socket: in the host's dir (hosts share one filesystem), or, when
        that path is too long for a Unix socket, in a short dir named after it."""
        sock = self.file("api.sock")
        if len(str(sock)) <= 100:
            return str(sock)
        import hashlib

        return f"/tmp/qvlab-{hashlib.sha256(self.dir.encode()).hexdigest()[:12]}/api.sock"


@dataclass(frozen=True)
class LabSpec:
    """Everything that decides the shape of a lab (stored in lab.json: down/status/faults read it)."""

    dir: str
    prefix: str = "qvlab"
    hosts: int = 3
    mode: Mode = "netns"
    subnet: str = ""          # first three octets; default 10.77.0 (netns) / 127.0.77 (loopback)
    user: str = "root"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,10}", self.prefix):
            raise LabError(f"bad lab prefix {self.prefix!r}",
                           "use 1-11 lowercase letters/digits, starting with a letter")
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise LabError(f"a lab has 1 to {MAX_HOSTS} hosts, not {self.hosts}", "pick --hosts in that range")
        if not self.subnet:
            object.__setattr__(self, "subnet", "10.77.0" if self.mode == "netns" else "127.0.77")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", self.subnet):
            raise LabError(f"bad lab subnet {self.subnet!r}", "give the first three octets, e.g. 10.77.0")

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    # -- the VM network (netns mode): one L2 segment apart from the management bridge ----------

    @property
    def vm_segment(self) -> str:
        """Root-namespace bridge joining every host's VM bridge and the client."""
        return f"{self.prefix}-vm0"

    @property
    def vm_subnet(self) -> str:
        """First three octets of the VM network: 10.88.<third octet of the lab's subnet>, so labs
        on different subnets (parallel test labs) get different VM networks too."""
        return f"10.88.{self.subnet.split('.')[2]}"

    @property
    def client_netns(self) -> str:
        return f"{self.prefix}-client"

    @property
    def client_address(self) -> str:
        return f"{self.vm_subnet}.2"

    def vm_address(self, k: int) -> str:
        """The address the lab gives guest number k (1-based) on the VM network."""
        return f"{self.vm_subnet}.{20 + k}"

    def host_names(self) -> list[str]:
        return [f"hv-{string.ascii_lowercase[i]}" for i in range(self.hosts)]

    def host(self, i: int) -> LabHost:
        name = self.host_names()[i]
        last = 10 + i + 1
        addr = f"{self.subnet}.{last}"
        hdir = str(self.path / name)
        if self.mode == "netns":
            return LabHost(name, i, addr, 22, API_LISTEN, MIGRATION_LISTEN, f"{addr}:{MIGRATION_PORT}", hdir,
                           netns=f"{self.prefix}-{name}", veth=f"{self.prefix}-v{i}",
                           vm_uplink=f"{self.prefix}-w{i}")
        return LabHost(name, i, addr, 2200 + last, f"{addr}:{API_PORT}", f"{addr}:{MIGRATION_PORT}",
                       f"{addr}:{MIGRATION_PORT}", hdir)

    def all_hosts(self) -> list[LabHost]:
        return [self.host(i) for i in range(self.hosts)]

    # -- files -------------------------------------------------------------------------------

    @property
    def key(self) -> Path:
        return self.path / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.path / "authorized_keys"

    @property
    def inventory(self) -> Path:
        return self.path / "inventory.yaml"

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, lab_dir: Path) -> LabSpec:
        file = lab_dir / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(file.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab at {lab_dir}", "start one with `qvplan lab up` (or pass --dir)") from None
        except ValueError:
            raise LabError(f"{file} is damaged", "remove the lab by hand (ip netns, the dir)") from None
        return cls(**data)
