"""The host agent on real QEMU: lifecycle, re-attach after restart, one-line errors, ping."""

from __future__ import annotations

import signal
import time

import pytest

from ..agents import ApiError, guest_vm, mutual_trust


def test_define_start_verify_stop(make_agent):
    a = make_agent("hv-a")
    a.api("POST", "vms", guest_vm("vm-1"))
    a.api("POST", "vms/vm-1/start", {})
    first = a.wait_markers("vm-1", 0)
    a.wait_markers("vm-1", first)  # markers keep advancing: the guest runs
    report = a.api("POST", "vms/vm-1/verify-ram")
    assert report["ok"], report
    facts = a.api("GET", "host")
    assert facts["name"] == "hv-a" and facts["vms"][0]["state"] == "running"
    assert facts["memory"]["committed"] == 128 << 20
    assert facts["pqc"]["fingerprint"].startswith("SHA256:")
    a.api("POST", "vms/vm-1/stop", {})
    assert a.vm("vm-1")["state"] == "defined"
    a.api("DELETE", "vms/vm-1")
    assert a.vm_names() == []


def test_agent_restart_reattaches_to_running_vm(make_agent):
    a = make_agent("hv-a")
    a.api("POST", "vms", guest_vm("vm-1"))
    a.api("POST", "vms/vm-1/start", {})
    pid = a.vm("vm-1")["pid"]
    a.kill()  # no clean shutdown: QEMU must outlive its agent
    a.start()
    vm = a.vm("vm-1")
    assert vm["state"] == "running" and vm["pid"] == pid
    a.wait_markers("vm-1", vm["serial_markers"])
    assert a.api("POST", "vms/vm-1/verify-ram")["ok"]


def test_unknown_vm_and_bad_definition_are_clear(make_agent, tmp_path):
    a = make_agent("hv-a")
    with pytest.raises(ApiError) as err:
        a.api("POST", "vms/nope/start", {})
    assert err.value.status == 404 and err.value.code == "unknown-vm" and "unknown VM 'nope'" in err.value.cause
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: vm-x\nmemory: lots\nguest: {test: {}}\n")
    out = a.cli("vm", "define", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "memory" in lines[0], out.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_bad_config_is_refused_with_file_and_key(tmp_path, where):
    """`quantavirt --config FILE agent` and `quantavirt agent --config FILE` (a systemd unit's form)."""
    import subprocess

    from ..agents import QUANTAVIRT

    cfg = tmp_path / "q.conf"
    cfg.write_text('[api]\nlisten = "127.0.0.1:9400"\nbogus = 1\n')
    argv = ["--config", str(cfg), "agent"] if where == "before" else ["agent", "--config", str(cfg)]
    out = subprocess.run([*QUANTAVIRT, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert str(cfg) in out.stderr and "api.bogus" in out.stderr and "unknown key" in out.stderr


def test_api_errors_carry_status_and_reason_code(make_agent):
    from qvplan.agent.client import AgentClient, AgentUnreachable

    a = make_agent("hv-a")
    a.api("POST", "vms", guest_vm("vm-1"))
    cases = [("GET", "vms/vm-1/migrate", None, 404, "no-migration"),
             ("POST", "vms/vm-1/migrate", {"dest": "127.0.0.9:9410", "flags": {"threads": 0}}, 400, "bad-request"),
             ("POST", "vms/vm-1/migrate/cancel", {}, 409, "vm-state"),
             ("POST", "vms", guest_vm("vm-1"), 409, "name-clash"),
             ("POST", "vms", {"name": "vm-2", "memory": "lots"}, 400, "bad-request")]
    for method, path, body, status, code in cases:
        with pytest.raises(ApiError) as err:
            a.api(method, path, body)
        assert (err.value.status, err.value.code) == (status, code), (path, err.value)
        assert err.value.cause and "\n" not in str(err.value)
    port = a.api_port
    a.stop()
    with pytest.raises(AgentUnreachable) as gone:
        AgentClient(f"{a.address}:{port}", timeout=5).get("host")
    assert gone.value.code == "agent-unreachable" and f"{a.address}:{port}" in gone.value.cause


def test_system_ping_shows_version_and_trust(make_agent):
    a, b = make_agent("hv-a"), make_agent("hv-b")
    out = a.cli("system", "ping", "--host", b.migration)
    assert out.returncode == 1 and "Trust: ❌" in out.stdout and "untrusted" in out.stdout
    mutual_trust(a, b)
    out = a.cli("system", "ping", "--host", b.migration)
    assert out.returncode == 0, out.stderr
    assert "Version: 0.1.0" in out.stdout and "Trust: ✅ (key: hv-a)" in out.stdout
    assert "PQC: cryptography" in out.stdout
    disk = b.root / "images" / "web.qcow2"
    disk.parent.mkdir(parents=True, exist_ok=True)
    disk.write_bytes(b"")
    out = a.cli("system", "storage-check", "--host", b.migration, "--path", str(disk))
    assert out.returncode == 0 and "Accessible: ✅" in out.stdout
    # Outside the pools and shared roots the answer is no, whether or not the path exists (issue 12).
    out = a.cli("system", "storage-check", "--host", b.migration, "--path", str(b.state))
    assert out.returncode == 1 and "Accessible: ❌" in out.stdout
    out = a.cli("system", "storage-check", "--host", b.migration, "--path", "/nonexistent/disk.qcow2")
    assert out.returncode == 1 and "Accessible: ❌" in out.stdout


def test_sigterm_stops_the_agent_promptly_despite_an_open_event_stream(make_agent):
    agent = make_agent("hv-a")
    stream = agent.client.events("vms/anything/events")  # opened here, held open
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    agent.proc.wait(15)
    assert time.monotonic() - started < 8
    stream.close()
