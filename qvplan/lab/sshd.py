"""A real OpenSSH sshd per lab host, with its own config, host key and pid file in the lab dir."""

from __future__ import annotations

import os
from pathlib import Path

from .model import LabError, LabHost, LabSpec
from .net import wait_tcp
from .procs import alive, cmdline, read_pid, sh

SSHD = "/usr/sbin/sshd"  # Debian's sshd refuses to run unless started by absolute path


def keygen(path: Path, comment: str) -> None:
    """An ed25519 key pair at `path` / `path`.pub, unless one is there already."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)


def client_files(spec: LabSpec) -> None:
    """The lab's login key, authorized_keys and known_hosts (host keys must exist)."""
    keygen(spec.key, f"qvplan-lab-{spec.prefix}")
    pub = spec.key.with_suffix(".pub").read_text()
    if not spec.authorized_keys.exists() or spec.authorized_keys.read_text() != pub:
        spec.authorized_keys.write_text(pub)
    lines = []
    for host in spec.all_hosts():
        key_type, key_b64 = host.file("ssh_host_ed25519_key.pub").read_text().split()[:2]
        who = host.address if host.ssh_port == 22 else f"[{host.address}]:{host.ssh_port}"
        lines.append(f"{who} {key_type} {key_b64}\n")
    text = "".join(lines)
    if not spec.known_hosts.exists() or spec.known_hosts.read_text() != text:
        spec.known_hosts.write_text(text)


def config_text(spec: LabSpec, host: LabHost) -> str:
    listen = "0.0.0.0:22" if host.netns else f"{host.address}:{host.ssh_port}"
    return "\n".join([
        f"ListenAddress {listen}",
        f"HostKey {host.file('ssh_host_ed25519_key')}",
        f"AuthorizedKeysFile {spec.authorized_keys}",
        f"PidFile {host.file('sshd.pid')}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "PrintMotd no",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "Subsystem sftp internal-sftp",
        "",
    ])


def pid(host: LabHost) -> int | None:
    p = read_pid(host.file("sshd.pid"))
    return p if alive(p) and "sshd" in cmdline(p or 0) else None


def start(spec: LabSpec, host: LabHost) -> None:
    """Start sshd for `host` unless it runs; wait until it accepts connections."""
    host.path.mkdir(parents=True, exist_ok=True)
    keygen(host.file("ssh_host_ed25519_key"), f"{host.name}-host")
    cfg = host.file("sshd_config")
    if not cfg.exists() or cfg.read_text() != config_text(spec, host):
        cfg.write_text(config_text(spec, host))
    if pid(host) is None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        argv = [SSHD, "-f", str(cfg), "-E", str(host.file("sshd.log"))]
        if host.netns:
            # Own UTS namespace too, so `hostname` on the lab host says hv-a.
            argv = ["ip", "netns", "exec", host.netns, "unshare", "--uts", "sh", "-c",
                    'hostname "$0" && exec "$@"', host.name, *argv]
        sh(argv)  # sshd daemonizes and writes its PidFile
    if not wait_tcp(host.address, host.ssh_port, 10):
        raise LabError(f"sshd of {host.name} does not accept on {host.address}:{host.ssh_port}",
                       f"see {host.file('sshd.log')}")
