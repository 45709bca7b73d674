"""Issue 12's attacks, as `nobody`, against a root agent, over every socket it opens: the control
socket (as deployed, opened too wide by mistake, and as a member of its group), the read-only
TCP API, and the migration listener. Each is refused, and the host is checked from the outside
afterwards: no VM defined or stopped, no key imported, no file written, no command run."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qvplan.contract.ports import CONTROL_GROUP
from qvplan.pqc import HostIdentity

from ..agents import AgentProc, guest_vm
from .outside import curl, member_of, snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="attacks a root agent as nobody: needs root")
NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def drop() -> Iterator[Path]:
    """Where the attacks' commands would write (world-writable, reachable by nobody and QEMU's user)."""
    path = Path(tempfile.mkdtemp(prefix="qv-drop-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_target(make_agent, **api: object) -> AgentProc:
    """A root agent running vm-1 and trusting a peer `hv-b` (a real key)."""
    agent = make_agent("hv-a", start=False)
    agent.api_extra = dict(api)
    agent.start()
    agent.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="4M"))
    agent.api("POST", "vms/vm-1/start", {})
    peer = HostIdentity.load_or_create(agent.root / "peer")
    agent.api("POST", "pqc/trust", {"name": "hv-b", "public_key": base64.b64encode(peer.public_key).decode()})
    return agent


def attacks(tmp: Path) -> list[tuple[str, str, object]]:
    """(method, path, body) of every change the issue's attacker made; `tmp` holds what they'd write."""
    rogue = HostIdentity.load_or_create(tmp / "rogue")
    key = base64.b64encode(rogue.public_key).decode()
    marker = tmp / f"pwned-{uuid.uuid4().hex}"
    return [
        ("POST", "/api/v1/vms", {"name": "evil", "memory": "64M", "vcpus": 1,
                                 "disks": [{"path": "/etc/shadow", "format": "raw"}]}),
        ("POST", "/api/v1/vms/vm-1/stop", {}),
        ("DELETE", "/api/v1/vms/vm-1", None),
        ("POST", "/api/v1/vms/vm-1/monitor", {"command": f'migrate "exec:id > {marker}; cat >/dev/null"'}),
        ("POST", "/api/v1/vms/vm-1/monitor", {"command": 'qemu-io disk0 "read -v 0 96"'}),
        ("POST", "/api/v1/pqc/trust", {"name": "evil", "public_key": key, "force": True}),
        ("POST", "/api/v1/pqc/trust", {"name": "hv-b", "public_key": key, "force": True}),  # replace a peer
    ]


def markers(tmp: Path) -> list[Path]:
    return list(tmp.glob("pwned-*"))


def assert_unchanged(agent: AgentProc, before: dict, tmp: Path) -> None:
    after = snapshot(agent)
    assert after == before
    assert ("vm-1", "running") in after["vms"] and after["qemu"]
    assert markers(tmp) == []
    assert all(os.path.exists(f"/proc/{pid}") for pid in before["qemu"])


def test_control_socket_admits_root_and_its_group_only(make_agent, drop: Path) -> None:
    tmp_path = drop
    agent = start_target(make_agent, allow_monitor=True)  # the strongest case: root turned HMP on
    before = snapshot(agent)
    sock = agent.socket
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam(CONTROL_GROUP).gr_gid)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755  # made by the agent (umask 077), walkable

    # 1. As deployed: the kernel does not even let nobody connect.
    for method, path, body in attacks(tmp_path):
        answer = curl(f"http://localhost{path}", method, body, unix=sock)
        assert answer.exit == 7 and answer.status == 0, (path, answer)
    assert_unchanged(agent, before, tmp_path)

    # 2. A member of the group is an operator: it reads and steers VMs, but HMP and trust are root's.
    #    (nobody with the group as its own, and a user the test adds to it as a supplementary group)
    with member_of(CONTROL_GROUP) as operator:
        for who in ({"group": CONTROL_GROUP}, {"user": operator}):
            member = curl("http://localhost/api/v1/vms", unix=sock, **who)
            assert member.status == 200 and [v["name"] for v in member.json] == ["vm-1"], (who, member)
            for method, path, body in attacks(tmp_path):
                if "/monitor" in path or "/pqc/" in path:
                    answer = curl(f"http://localhost{path}", method, body, unix=sock, **who)
                    assert (answer.status, answer.code) == (403, "forbidden"), (who, path, answer)
                    assert "root" in answer.json["error"]
    assert_unchanged(agent, before, tmp_path)

    # 3. A socket opened to everyone by mistake: the credential check (SO_PEERCRED) still says no.
    sock.chmod(0o666)
    for method, path, body in attacks(tmp_path):
        answer = curl(f"http://localhost{path}", method, body, unix=sock)
        assert (answer.status, answer.code) == (403, "forbidden"), (path, answer)
        assert f"uid {NOBODY} may not use the control socket" in answer.json["error"]
    read = curl("http://localhost/api/v1/vms", unix=sock)
    assert (read.status, read.code) == (403, "forbidden")  # not even a read there
    assert_unchanged(agent, before, tmp_path)
    assert f"control socket: refused uid {NOBODY}" in agent.log_tail(200)

    # What kept them out was the checks: root on the same socket reaches the monitor.
    assert "running" in agent.api("POST", "vms/vm-1/monitor", {"command": "info status"})["output"]


def test_tcp_api_reads_for_everyone_and_changes_nothing(make_agent, drop: Path) -> None:
    tmp_path = drop
    agent = start_target(make_agent, allow_monitor=True)
    before = snapshot(agent)
    base = f"http://{agent.address}:{agent.api_port}"
    for method, path, body in attacks(tmp_path):
        for content_type in ("application/json", "text/plain"):  # text/plain: what a page may send
            answer = curl(base + path, method, body, content_type=content_type)
            assert (answer.status, answer.code) == (405, "read-only-api"), (path, answer)
            assert "[api] socket" in answer.json["fix"] and "\n" not in answer.json["error"]
    for method in ("PUT", "PATCH"):
        assert curl(base + "/api/v1/vms/vm-1", method, {}).code == "read-only-api"
    assert_unchanged(agent, before, tmp_path)

    # what the spec promises on TCP, to anyone on the host
    for path in ("/api/v1/host", "/api/v1/vms", "/api/v1/vms/vm-1", "/metrics"):
        assert curl(base + path).status == 200, path
    for host in ("localhost", f"localhost:{agent.api_port}", f"hv-a:{agent.api_port}"):  # hv-a: its own name
        assert curl(base + "/api/v1/vms", headers={"Host": host}).status == 200, host
    # ...but not to a web page: an Origin, or a Host that is not this listener (DNS rebinding)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Host": "evil.example"},
                    {"Host": f"evil.example:{agent.api_port}"}):
        answer = curl(base + "/api/v1/vms", headers=headers)
        assert (answer.status, answer.code) == (403, "forbidden"), (headers, answer)
        assert "vm-1" not in answer.body


def test_migration_listener_answers_junk_with_nothing(make_agent, drop: Path) -> None:
    tmp_path = drop
    agent = start_target(make_agent)
    before = snapshot(agent)
    facts = agent.api("GET", "host")
    ident = agent.api("GET", "pqc/identity")
    for method, path, body in attacks(tmp_path)[:3]:
        answer = curl(f"http://{agent.migration}{path}", method, body)
        assert answer.status == 0 and answer.exit != 0, answer  # no HTTP there, and no refusal in HTTP either
        for secret in (facts["name"], str(facts["version"]), ident["fingerprint"], ident["public_key"][:40]):
            assert secret not in answer.body
    assert_unchanged(agent, before, tmp_path)


def test_root_on_the_control_socket_cannot_force_or_overwrite_trust(make_agent, drop: Path) -> None:
    tmp_path = drop
    agent = start_target(make_agent)  # allow_monitor left at its default: off
    before = snapshot(agent)
    with pytest.raises(Exception) as off:
        agent.api("POST", "vms/vm-1/monitor", {"command": "info status"})
    assert (off.value.status, off.value.code) == (403, "monitor-disabled")
    assert "allow_monitor" in off.value.fix

    rogue = HostIdentity.load_or_create(tmp_path / "rogue")
    key = base64.b64encode(rogue.public_key).decode()
    with pytest.raises(Exception) as forced:
        agent.api("POST", "pqc/trust", {"name": "evil", "public_key": key, "force": True})
    assert (forced.value.status, forced.value.code) == (403, "forbidden")
    with pytest.raises(Exception) as changed:
        agent.api("POST", "pqc/trust", {"name": "hv-b", "public_key": key})
    assert (changed.value.status, changed.value.code) == (409, "key-changed")
    assert "quantavirt pqc key-import --name hv-b --force" in changed.value.fix
    with pytest.raises(Exception) as wrong:
        agent.api("POST", "pqc/trust", {"name": "new", "public_key": key, "fingerprint": "SHA256:planned"})
    assert wrong.value.code == "key-changed"
    assert_unchanged(agent, before, tmp_path)
    # the one import that is allowed: a new name, the key the caller expected
    done = agent.api("POST", "pqc/trust", {"name": "new", "public_key": key, "fingerprint": rogue.fingerprint})
    assert done["fingerprint"] == rogue.fingerprint
    assert (agent.state / "pqc" / "trusted" / "new.pub").exists()
