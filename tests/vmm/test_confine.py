"""QEMU confinement, attacked for real: a monitor that reaches QEMU cannot make it run anything,
and a root agent's QEMU runs as the unprivileged user. Checked with `ps` and the file system."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPError

from qvplan.vmm import QemuProcess
from qvplan.vmm.confine import QEMU_USER, Confinement, ConfinementError, sandbox_args, sandbox_supported, tap_fds
from qvplan.vmm.host import qemu_version

from ..agents import guest_vm
from .conftest import guest_spec, needs_qemu

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the user switch needs a root agent")


def qemu_major() -> int:
    return int(qemu_version().split(".")[0])


def ps_user(pid: int) -> str:
    return subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()


def gone(pid: int, timeout: float = 10) -> bool:
    """Has `pid` ended (exited, or a zombie its parent has not reaped yet)? Asked of `ps`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        if not state or state.startswith("Z"):
            return True
        time.sleep(0.1)
    return False


@needs_qemu
def test_installed_qemu_has_the_sandbox() -> None:
    assert sandbox_supported("qemu-system-x86_64"), "Debian's QEMU is built with seccomp"


def test_a_qemu_without_seccomp_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-no-seccomp"
    fake.write_text("#!/bin/sh\necho '-sandbox support is not enabled in this QEMU binary' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ConfinementError) as err:
        sandbox_args(str(fake))
    assert err.value.reason_code == "qemu-confinement"
    assert "no seccomp sandbox" in str(err.value) and "\n" not in str(err.value)


@needs_qemu
@root_only
async def test_exec_migration_over_qmp_runs_nothing(tmp_path: Path) -> None:
    """The test holds the VM's QMP itself, as an attacker who reached the socket would."""
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    proc = QemuProcess(guest_spec("tg"), run_dir=run_dir, accel="tcg", confinement=Confinement.for_agent())
    await proc.start()
    try:
        pid = proc.pid
        assert pid is not None
        assert ps_user(pid) == QEMU_USER
        info = run_dir.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o1770)
        with pytest.raises((ExecuteError, QMPError, EOFError, OSError, ConnectionError)):
            await proc.qmp.execute("migrate", {"uri": f"exec:touch {marker}"})
            await proc.qmp.execute("query-migrate")
        assert not marker.exists()
        # The sandbox refuses the fork: QEMU 9.0 and later get EPERM and fail the migration;
        # earlier QEMU is killed by the kernel's seccomp at clone()
        if proc.is_alive():
            assert (await proc.qmp.execute("query-migrate"))["status"] == "failed"
            assert qemu_major() >= 9
        else:
            assert gone(pid) and proc._popen is not None and proc._popen.returncode == -signal.SIGSYS
    finally:
        await proc.stop(graceful=False)


@needs_qemu
@root_only
def test_agent_qemu_runs_unprivileged_and_its_monitor_cannot_spawn(make_agent, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-hmp"
    agent = make_agent("hv-a", start=False)
    agent.api_extra = {"allow_monitor": True}  # an operator who turned the passthrough on: QEMU still spawns nothing
    agent.start()
    agent.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="4M"))
    agent.api("POST", "vms/vm-1/start", {})
    pid = int((agent.state / "vms/vm-1/run/qemu.pid").read_text())
    assert ps_user(pid) == QEMU_USER
    # the attack: a migrate command with an exec: URI through the monitor
    try:
        agent.api("POST", "vms/vm-1/monitor", {"command": f'migrate "exec:id > {marker}"'}, timeout=20)
    except Exception:
        pass  # QEMU dying under the command (before 9.0) may break the request; what matters is below
    time.sleep(0.5)
    assert not marker.exists()
    if qemu_major() >= 9:  # the fork refused with EPERM: QEMU lives on, migrating nowhere
        assert not gone(pid, timeout=0.5) and agent.vm("vm-1")["state"] == "running"
    else:  # killed by seccomp at clone()
        assert gone(pid)


@needs_qemu
@root_only
async def test_symlinks_a_qemu_left_in_its_run_dir_are_not_followed(tmp_path: Path) -> None:
    """A QEMU taken over by its guest may plant symlinks in its run dir before it exits; the agent
    (root) must not write through them when it starts the next QEMU there."""
    conf = Confinement.for_agent()
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    conf.prepare_run_dir(run_dir)
    for name in ("testguest.img.tmp", "spec.json.tmp", "qemu.pid.tmp"):
        (run_dir / name).symlink_to(victim)
        os.lchown(run_dir / name, conf.uid, conf.gid)  # as QEMU's user would have made them
    proc = QemuProcess(guest_spec("tg"), run_dir=run_dir, accel="tcg", confinement=conf)
    await proc.start()
    try:
        await proc.wait_markers(0)
    finally:
        await proc.stop(graceful=False)
    assert victim.read_text() == "root's file\n"
    assert not any(p.is_symlink() for p in run_dir.iterdir())


def test_confinement_without_root_keeps_the_sandbox(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    conf = Confinement.for_agent()
    assert conf.sandbox and not conf.switches_user and "user" not in conf.popen_args()


@root_only
def test_a_missing_qemu_user_is_one_line() -> None:
    with pytest.raises(ConfinementError) as err:
        Confinement.for_agent("qv-no-such-user")
    assert err.value.reason_code == "qemu-confinement" and "useradd --system" in str(err.value)


@needs_qemu
@root_only
def test_qemu_in_a_network_namespace_still_drops_to_its_user(tmp_path: Path) -> None:
    """Lab hosts start QEMU through `ip netns exec` (needs root): the user switch then happens
    after it, by setpriv; QEMU ends up in the namespace, as its user, in the sandbox, with its
    tap created in that namespace."""
    netns = f"qv12t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    conf = Confinement.for_agent()
    tap = f"qv12n{os.getpid() % 100000}"
    qemu, taps = tap_fds(["qemu-system-x86_64", *sandbox_args("qemu-system-x86_64"), "-machine", "none",
                          "-display", "none", "-nodefaults", "-S", "-chardev",
                          "socket,id=qmp,path=qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
                          "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no"], conf, 2)
    assert taps and f"tap,id=net0,fd={taps[0][1]}" in qemu
    argv, extra = conf.launch(qemu, netns=netns, taps=taps)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    conf.prepare_run_dir(run_dir)
    proc = subprocess.Popen(argv, cwd=run_dir, stdin=subprocess.DEVNULL, start_new_session=True, **extra)
    try:
        deadline = time.monotonic() + 15
        while not (run_dir / "qmp.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run_dir / "qmp.sock").exists()
        assert ps_user(proc.pid) == QEMU_USER
        ident = subprocess.run(["ip", "netns", "identify", str(proc.pid)], capture_output=True, text=True)
        assert ident.stdout.strip() == netns
        in_ns = subprocess.run(["ip", "-n", netns, "link", "show", "dev", tap], capture_output=True)
        assert in_ns.returncode == 0 and not link_exists(tap)  # the tap is in the VM host's namespace
        assert b"qemu-system" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0]
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "netns", "del", netns])


@needs_qemu
@root_only
def test_a_kernel_in_a_private_pool_reaches_qemu_of_its_own_user(tmp_path: Path) -> None:
    """-kernel/-initrd are read with fopen (no fd sets): they are copied into the run dir."""
    from qvplan.vmm.confine import boot_files_in_run_dir

    pool = tmp_path / "pool"
    pool.mkdir(mode=0o700)
    kernel = pool / "vmlinuz"
    kernel.write_bytes(bytes(8192))  # no Linux header: QEMU loads it as an old-style image
    kernel.chmod(0o600)
    conf = Confinement.for_agent()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    conf.prepare_run_dir(run_dir)
    qemu = ["qemu-system-x86_64", *sandbox_args("qemu-system-x86_64"), "-machine", "pc", "-display", "none",
            "-nodefaults", "-S", "-kernel", str(kernel), "-chardev",
            "socket,id=qmp,path=qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control"]
    argv, extra = conf.launch(boot_files_in_run_dir(qemu, run_dir, conf))
    assert "-kernel" in argv and argv[argv.index("-kernel") + 1] == "boot-kernel"
    proc = subprocess.Popen(argv, cwd=run_dir, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, **extra)
    try:
        deadline = time.monotonic() + 15
        while not (run_dir / "qmp.sock").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert ps_user(proc.pid) == QEMU_USER
    finally:
        proc.kill()
        proc.wait()


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


@needs_qemu
@root_only
async def test_a_tap_nic_is_created_for_qemu_of_its_own_user(tmp_path: Path) -> None:
    """Creating a tap needs CAP_NET_ADMIN, which QEMU's user lacks: the agent creates it (as
    root) and passes its fd; the tap lives exactly as long as that QEMU."""
    from qvplan.vmm import VMSpec

    tap = f"qv12t{os.getpid() % 100000}"
    assert not link_exists(tap)
    spec = VMSpec.load({"name": "tp", "memory": "64M", "nic": {"type": "tap", "ifname": tap},
                        "guest": {"test": {"working_set": "4M"}}})
    proc = QemuProcess(spec, run_dir=tmp_path / "run", accel="tcg", confinement=Confinement.for_agent())
    await proc.start()
    try:
        assert proc.pid is not None and ps_user(proc.pid) == QEMU_USER
        assert link_exists(tap)
        assert "/dev/net/tun" in {os.readlink(fd) for fd in Path(f"/proc/{proc.pid}/fd").iterdir()}
        await proc.wait_markers(0)
    finally:
        await proc.stop(graceful=False)
    deadline = time.monotonic() + 5
    while link_exists(tap) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link_exists(tap)


def proc_groups(pid: int) -> set[int]:
    """A process's supplementary groups, as the kernel lists them."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:]}
    raise AssertionError(f"no Groups line for {pid}")


def char_device(path: Path, gid: int, mode: int) -> str:
    """A character device node (/dev/null's numbers) standing in for /dev/kvm."""
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(1, 3))
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    return str(path)


@root_only
def test_the_kvm_device_is_reached_only_through_a_group_that_grants_it(tmp_path: Path) -> None:
    granted = Confinement.for_agent(kvm=True, device=char_device(tmp_path / "kvm-g", 4242, 0o660))
    assert granted.kvm and granted.groups == (4242,)
    for name, gid, mode in (("kvm-private", 4242, 0o600), ("kvm-root", 0, 0o660)):
        refused = Confinement.for_agent(kvm=True, device=char_device(tmp_path / name, gid, mode))
        assert not refused.kvm and refused.groups == ()
    assert Confinement.for_agent(kvm=True, device=str(tmp_path / "absent")).groups == ()
    not_asked = Confinement.for_agent(kvm=False, device=str(tmp_path / "kvm-g"))
    assert not not_asked.kvm and not_asked.groups == ()


def test_an_unprivileged_agent_keeps_the_kvm_it_detected(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert Confinement.for_agent(kvm=True).kvm and not Confinement.for_agent(kvm=False).kvm


@needs_qemu
@root_only
async def test_qemu_keeps_the_kvm_group_and_no_other(tmp_path: Path) -> None:
    """The user switch keeps exactly the device's group as QEMU's supplementary group, by both
    launch paths (Popen's user switch, and setpriv after `ip netns exec`)."""
    conf = Confinement.for_agent(kvm=True, device=char_device(tmp_path / "kvm", 4242, 0o660))
    proc = QemuProcess(guest_spec("tg"), run_dir=tmp_path / "run", accel="tcg", confinement=conf)
    await proc.start()
    try:
        assert proc.pid is not None and ps_user(proc.pid) == QEMU_USER
        assert proc_groups(proc.pid) == {4242}
    finally:
        await proc.stop(graceful=False)
    argv, _ = conf.launch(["true"], netns="qv-any")
    assert argv[argv.index("setpriv") + 3] == "--groups=4242"
    assert "--clear-groups" in Confinement.for_agent().launch(["true"], netns="qv-any")[0]


@needs_qemu
@root_only
def test_the_agent_runs_its_guests_with_the_accelerator_it_reports(make_agent) -> None:
    """Where KVM works, the agent's QEMU (its own user) must be able to use it; where it does not,
    TCG. Checked on QEMU's command line and by the guest running."""
    from qvplan.vmm import detect_accel

    agent = make_agent("hv-a")
    reported = agent.api("GET", "host")["accelerator"]
    assert reported == detect_accel()
    agent.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="4M"))
    agent.api("POST", "vms/vm-1/start", {})
    pid = int((agent.state / "vms/vm-1/run/qemu.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-accel") + 1].decode().split(",")[0] == reported
    assert agent.vm("vm-1")["state"] == "running"
