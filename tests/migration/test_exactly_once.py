"""Exactly one running copy, whatever fails: agents killed (-9) and stopped (SIGTERM) at each
point of the switchover, restarted; the destination QEMU frozen across a cut commit.

Exact points come from the test-only fault hook (QUANTAVIRT_TEST_PAUSE_AT, qvplan/migration/faults.py);
the invariant is checked from /proc, the serial logs and the state directories (invariant.py).
"""

from __future__ import annotations

import json
import os
import signal
import time

from ..agents import mutual_trust
from .helpers import start_guest, wait_outcome
from .invariant import exactly_one, journal, qemu_pids, release_point, wait_point
from .proxy import TapProxy

SMALL = {"memory": "64M", "working_set": "8M"}
SLOW = {"bandwidth": "2M", "auto_converge": False, "max_downtime": "10ms", "threads": 1}
FAST = {"threads": 1}
POINT = "QUANTAVIRT_TEST_PAUSE_AT"
BOOT = "QUANTAVIRT_TEST_BOOT_ID"  # the boot id a restarted agent believes it runs in (faults.py)


def two_agents(make_agent, a_at: str = "", b_at: str = ""):
    a, b = make_agent("hv-a", start=False), make_agent("hv-b", start=False)
    a.env, b.env = {POINT: a_at}, {POINT: b_at}
    a.start(), b.start()
    mutual_trust(a, b)
    start_guest(a, **SMALL)
    return a, b


def restart(agent) -> None:
    agent.env = {}
    agent.start()


def wait_state(agent, session_state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = journal(agent)
        if records and records[-1].get("state") == session_state:
            return records[-1]
        time.sleep(0.1)
    raise AssertionError(f"{agent.name}: journal never reached {session_state}: {journal(agent)}")


def wait_doubt(agent, says: str, timeout: float = 30) -> dict:
    """Until the agent's migration status of vm-1 is in doubt and its doubt says `says`."""
    deadline = time.monotonic() + timeout
    while says not in ((status := agent.api("GET", "vms/vm-1/migrate")).get("doubt") or ""):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_source_agent_killed_in_phase_2_rolls_back_on_restart(make_agent):
    a, b = two_agents(make_agent)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": SLOW})
    wait_state(a, "transferring")
    time.sleep(1)
    a.kill()
    restart(a)
    wait_state(a, "rolled-back")
    wait_state(b, "discarded")
    exactly_one(a, b)


def test_source_agent_killed_in_phase_4_rolls_back_on_restart(make_agent):
    a, b = two_agents(make_agent, a_at="source-before-commit")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(a, "source-before-commit")  # guest paused here, loaded there, no commit sent
    a.kill()
    restart(a)
    wait_state(a, "rolled-back")
    wait_state(b, "discarded")
    exactly_one(a, b)


def test_the_commit_goes_ahead_of_received(make_agent):
    """The source commits as soon as its own QEMU sent everything, not once "received" came back:
    held where its QEMU loaded it all but "received" is not sent, the destination finds the commit
    already there, sends no "received" and resumes the guest."""
    a, b = two_agents(make_agent, b_at="dest-loaded")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-loaded")
    wait_state(a, "committed")  # no "received" has left the destination
    release_point(b, "dest-loaded")
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "COMPLETED", status
    (path,) = (b.state / "migrations").glob("*.jsonl")
    states = [json.loads(line)["state"] for line in path.read_text().strip("\0\n").splitlines()]
    assert states == ["loading", "committing", "running"], states  # never "loaded": no "received" sent
    exactly_one(b, a)


def test_a_commit_ahead_is_void_while_the_destination_has_not_acted_on_it(make_agent):
    """The source committed ahead, then the destination QEMU dies before the destination took the
    commit: the guest never ran there, the destination discards the session by itself and the
    source, told "discarded" when it asks, resumes its own copy (no operator)."""
    a, b = two_agents(make_agent, b_at="dest-loaded")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-loaded")
    wait_state(a, "committed")
    (pid,) = qemu_pids(b, "vm-1")
    os.kill(pid, signal.SIGKILL)
    while pid in qemu_pids(b, "vm-1"):
        time.sleep(0.02)
    release_point(b, "dest-loaded")
    status = wait_outcome(a, "vm-1", timeout=60)
    assert status["state"] == "FAILED" and journal(a)[-1]["state"] == "rolled-back", status
    assert journal(b)[-1]["state"] == "discarded", journal(b)[-1]
    exactly_one(a, b)


def test_source_agent_killed_right_after_commit_releases_on_restart(make_agent):
    a, b = two_agents(make_agent, a_at="source-after-commit")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(a, "source-after-commit")
    a.kill()
    wait_state(b, "running")
    restart(a)
    wait_state(a, "released")
    exactly_one(b, a)
    assert a.api("GET", "vms/vm-1/migrate")["state"] == "COMPLETED"  # the journal's word after the restart


def hold_commit_until_received(make_agent):
    """Both agents at the window "loaded there, no commit read": the source holds its commit
    (which it would send ahead, as soon as its QEMU sent everything) until the destination sent
    "received", so the destination cannot take the commit while it still loads."""
    a, b = two_agents(make_agent, a_at="source-before-commit", b_at="dest-after-received")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-after-received")
    wait_point(a, "source-before-commit")
    return a, b


def test_destination_killed_between_received_and_commit(make_agent):
    a, b = hold_commit_until_received(make_agent)
    b.kill()
    release_point(a, "source-before-commit")  # the commit leaves into a dead agent's channel
    status = wait_doubt(a, "paused on this host")
    assert "paused on this host" in status["doubt"] and "migrate-settle" in status["doubt"]
    assert len(qemu_pids(a, "vm-1")) == 1 and a.vm("vm-1")["state"] == "migrating"
    restart(b)  # discards what never committed; the source, asking again, resumes its copy
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    exactly_one(a, b)


def test_destination_killed_between_cont_and_confirmation(make_agent):
    a, b = two_agents(make_agent, b_at="dest-after-cont")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-after-cont")  # the guest runs there, journal says committing
    b.kill()
    time.sleep(1)
    assert len(qemu_pids(a, "vm-1")) == 1 and a.vm("vm-1")["state"] == "migrating"  # paused, not resumed
    restart(b)  # keeps the guest that may have run; the source releases on "running"
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "COMPLETED", status
    exactly_one(b, a)


def test_destination_qemu_frozen_across_a_cut_commit(make_agent):
    a, b = two_agents(make_agent, b_at="dest-before-cont")
    host, port = b.migration.split(":")
    tap = TapProxy(a.address, (host, int(port)))
    a.api("POST", "vms/vm-1/migrate", {"dest": tap.address, "flags": FAST})
    wait_point(b, "dest-before-cont")  # committing journaled, cont not yet sent
    pid = b.vm("vm-1")["pid"]
    os.kill(pid, signal.SIGSTOP)
    tap.cut()
    release_point(b, "dest-before-cont")
    time.sleep(3)
    assert a.api("GET", "vms/vm-1/migrate")["state"] == "MIGRATING"  # told "committing": waits, paused
    assert journal(b)[-1]["state"] == "committing"
    os.kill(pid, signal.SIGCONT)
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "COMPLETED", status
    exactly_one(b, a)


def test_sigterm_of_the_source_rolls_back_in_order(make_agent):
    a, b = two_agents(make_agent)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": SLOW})
    wait_state(a, "transferring")
    time.sleep(1)
    a.stop()  # SIGTERM
    assert journal(a)[-1]["state"] == "rolled-back" and "settled_by" not in journal(a)[-1]
    wait_state(b, "discarded")
    restart(a)
    exactly_one(a, b)


def test_sigterm_of_the_destination_rolls_back_in_order(make_agent):
    a, b = two_agents(make_agent)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": SLOW})
    wait_state(b, "loading")
    time.sleep(1)
    b.stop()  # SIGTERM
    assert journal(b)[-1]["state"] == "discarded" and "settled_by" not in journal(b)[-1]
    assert qemu_pids(b, "vm-1") == []
    status = wait_outcome(a, "vm-1")
    assert status["state"] == "FAILED", status
    restart(b)
    exactly_one(a, b)


def test_operator_settles_a_migration_in_doubt(make_agent):
    a, b = hold_commit_until_received(make_agent)
    b.kill()
    release_point(a, "source-before-commit")
    deadline = time.monotonic() + 30
    while "In Doubt:" not in (shown := a.cli("vm", "migrate-status", "vm-1").stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert "migrate-settle vm-1" in shown
    refused = a.cli("vm", "migrate-settle", "vm-1")
    assert refused.returncode != 0 and "--resume-here or --discard-here" in refused.stderr
    settled = a.cli("vm", "migrate-settle", "vm-1", "--resume-here")
    assert settled.returncode == 0, settled.stderr
    assert "resumed here" in settled.stdout
    assert journal(a)[-1]["state"] == "rolled-back" and journal(a)[-1]["settled_by"] == "operator"
    restart(b)
    wait_state(b, "discarded")
    exactly_one(a, b)


def test_destination_qemu_killed_before_cont_is_discarded_and_the_source_resumes(make_agent):
    """The destination QEMU killed after the commit but before `cont` left (found by
    bench/chaos.py: killed just before the commit, it was not yet reaped when the commit came):
    the guest, started paused, never ran there, so the destination discards the session itself
    and the source resumes its copy, no operator needed."""
    a, b = make_agent("hv-a", start=False), make_agent("hv-b", start=False)
    b.env = {POINT: "dest-before-cont"}
    a.start(), b.start()
    mutual_trust(a, b)
    start_guest(a, **SMALL)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-before-cont")  # committing journaled, cont not sent
    (pid,) = qemu_pids(b, "vm-1")
    os.kill(pid, signal.SIGKILL)
    while pid in qemu_pids(b, "vm-1"):
        time.sleep(0.02)
    release_point(b, "dest-before-cont")
    status = wait_outcome(a, "vm-1", timeout=60)
    assert status["state"] == "FAILED" and journal(a)[-1]["state"] == "rolled-back", status
    assert journal(b)[-1]["state"] == "discarded" and "settled_by" not in journal(b)[-1], journal(b)[-1]
    exactly_one(a, b)


def test_lost_destination_session_discarded_there_resumes_the_source(make_agent):
    """The destination agent killed right after journaling the commit, its QEMU killed too: the
    restarted agent cannot know whether `cont` left before, so the session is lost there and the
    source paused in doubt. The operator settles it on the destination with --discard-here (the
    real CLI); the source, still asking, resumes its own copy."""
    a, b = make_agent("hv-a", start=False), make_agent("hv-b", start=False)
    b.env = {POINT: "dest-before-cont"}
    a.start(), b.start()
    mutual_trust(a, b)
    start_guest(a, **SMALL, disks=[{"pool": "default", "file": "vm-1.qcow2", "size": "32M", "format": "qcow2"}])
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": {**FAST, "storage_migrate": True}})
    wait_point(b, "dest-before-cont")  # committing journaled, cont not sent
    assert (b.root / "images" / "vm-1.qcow2").exists()  # the image this session landed
    (pid,) = qemu_pids(b, "vm-1")
    b.kill()
    os.kill(pid, signal.SIGKILL)
    while pid in qemu_pids(b, "vm-1"):
        time.sleep(0.02)
    b.env = {}
    b.start()
    lost = wait_state(b, "lost")
    assert [i["path"] for i in lost["images"]] == [str(b.root / "images" / "vm-1.qcow2")]
    wait_doubt(a, "lost its QEMU")
    assert len(qemu_pids(a, "vm-1")) == 1 and a.vm("vm-1")["state"] == "migrating"  # paused, not resumed
    shown = b.cli("vm", "migrate-status", "vm-1").stdout
    assert "journal: destination lost" in shown and "--discard-here" in shown, shown

    refused = b.cli("vm", "migrate-settle", "vm-1", "--resume-here")
    assert refused.returncode != 0 and "(reason: qemu-lost)" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and journal(b)[-1]["state"] == "lost"
    settled = b.cli("vm", "migrate-settle", "vm-1", "--discard-here")
    assert settled.returncode == 0, settled.stderr
    assert "1 image(s) removed" in settled.stdout and "resumes its paused copy" in settled.stdout, settled.stdout
    assert journal(b)[-1]["state"] == "discarded" and journal(b)[-1]["settled_by"] == "operator"

    status = wait_outcome(a, "vm-1", timeout=30)  # the source asks again within its 5 s backoff cap
    assert status["state"] == "FAILED" and journal(a)[-1]["state"] == "rolled-back", status
    exactly_one(a, b)
    assert (a.root / "images" / "vm-1.qcow2").exists()  # the source's own disk stays
    assert "journal: destination discarded" in b.cli("vm", "migrate-status", "vm-1").stdout


def forget_unflushed(agent, state: str) -> None:
    """What a host crash does to a journal line still in the page cache: the line is gone (zeros,
    as in the block allocated when the session opened)."""
    (path,) = (agent.state / "migrations").glob("*.jsonl")
    content = path.read_bytes()
    start = content.index(f'"state": "{state}"'.encode())
    start = content.rindex(b"\n", 0, start) + 1
    end = content.index(b"\n", start) + 1
    path.write_bytes(content[:start] + bytes(end - start) + content[end:])
    assert journal(agent)[-1]["state"] != state


def kill_with_its_qemu(agent, name: str) -> None:
    """The agent and its QEMU gone at once, as in a host crash."""
    (pid,) = qemu_pids(agent, name)
    agent.kill()
    os.kill(pid, signal.SIGKILL)
    while pid in qemu_pids(agent, name):
        time.sleep(0.02)


def states(agent) -> list[str]:
    """Every state the agent's one session went through, from its journal file."""
    (path,) = (agent.state / "migrations").glob("*.jsonl")
    return [line["state"] for line in map(json.loads, path.read_bytes().rstrip(b"\0").splitlines()) if "state" in line]


def test_destination_host_crash_before_committing_reached_its_disk_is_lost_not_discarded(make_agent):
    """`committing` is flushed behind the destination's `cont` (off the guest's pause). A host crash
    right after it may lose that line: the restarted destination, in another boot, finds `loaded`
    and must not take it at its word (the guest may have run and written to disk there). It asks
    the source, which committed: lost; the operator settles, the source resumes its paused copy."""
    a, b = two_agents(make_agent, b_at="dest-before-cont")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(b, "dest-before-cont")  # committing written (its flush behind), cont not sent
    kill_with_its_qemu(b, "vm-1")
    forget_unflushed(b, "committing")
    b.env = {BOOT: "after-a-crash"}
    b.start()
    lost = wait_state(b, "lost")
    assert lost["source_state"] == "committed" and "rebooted" in states(b), states(b)
    wait_doubt(a, "lost its QEMU")
    assert len(qemu_pids(a, "vm-1")) == 1 and a.vm("vm-1")["state"] == "migrating"  # paused, not resumed
    shown = b.cli("vm", "migrate-status", "vm-1").stdout
    assert "restarted before the commit's record reached its disk" in shown and "--discard-here" in shown, shown
    settled = b.cli("vm", "migrate-settle", "vm-1", "--discard-here")
    assert settled.returncode == 0, settled.stderr
    status = wait_outcome(a, "vm-1", timeout=30)
    assert status["state"] == "FAILED" and journal(a)[-1]["state"] == "rolled-back", status
    exactly_one(a, b)


def test_destination_host_crash_before_the_commit_is_discarded_by_the_source_s_word(make_agent):
    """The destination host crashes while the source has not committed yet: the restarted
    destination, in another boot, asks the source (awaiting-commit: no commit ever left), discards
    the session by itself, and the source resumes its copy. No operator."""
    a, b = two_agents(make_agent, a_at="source-before-commit")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(a, "source-before-commit")  # guest paused here, loaded there, no commit sent
    kill_with_its_qemu(b, "vm-1")
    b.env = {BOOT: "after-a-crash"}
    b.start()
    ended = wait_state(b, "discarded")
    assert (ended["settled_by"], ended["source_state"]) == ("source", "awaiting-commit"), ended
    assert states(b)[-2:] == ["rebooted", "discarded"], states(b)
    assert not (b.state / "vms" / "vm-1").exists()  # VM and files gone before the source moved on
    release_point(a, "source-before-commit")
    status = wait_outcome(a, "vm-1", timeout=60)
    assert status["state"] == "FAILED" and journal(a)[-1]["state"] == "rolled-back", status
    exactly_one(a, b)


def test_a_rebooted_destination_whose_source_is_silent_keeps_asking_until_the_operator_settles(make_agent):
    """The destination host crashes in the switchover while its source agent is down too: the
    restarted destination keeps the session `rebooted` (definition kept, asking with backoff) and
    says so; the operator settles it there with --discard-here. The source agent, restarted before
    its commit, then rolls back on its own: the guest runs there, once."""
    a, b = two_agents(make_agent, a_at="source-before-commit")
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    wait_point(a, "source-before-commit")  # awaiting-commit: the guest paused here, loaded there
    kill_with_its_qemu(b, "vm-1")
    a.kill()  # its QEMU stays, paused
    b.env = {BOOT: "after-a-crash"}
    b.start()
    wait_state(b, "rebooted")
    time.sleep(2)  # a few rounds of asking a source that does not answer
    assert journal(b)[-1]["state"] == "rebooted" and (b.state / "vms" / "vm-1").exists()
    shown = b.cli("vm", "migrate-status", "vm-1").stdout
    assert "asking the source" in shown and "--discard-here" in shown, shown
    settled = b.cli("vm", "migrate-settle", "vm-1", "--discard-here")
    assert settled.returncode == 0, settled.stderr
    assert journal(b)[-1]["state"] == "discarded" and journal(b)[-1]["settled_by"] == "operator"
    restart(a)
    wait_state(a, "rolled-back")
    exactly_one(a, b)


def test_status_by_session_answers_for_that_move_after_a_newer_one(pair):
    """`GET …/migrate?session=S` (apply follows its move by it): the journal's word on S, even once
    a later migration of the same VM is the newest on that host."""
    a, b = pair
    start_guest(a, **SMALL)
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": FAST})
    first = wait_outcome(a, "vm-1")
    assert first["state"] == "COMPLETED", first
    b.api("POST", "vms/vm-1/migrate", {"dest": a.migration, "flags": FAST})
    assert wait_outcome(b, "vm-1")["state"] == "COMPLETED"
    assert b.api("GET", "vms/vm-1/migrate")["session"] != first["session"]  # b's own, newer move
    asked = b.api("GET", f"vms/vm-1/migrate?session={first['session']}")
    assert (asked["session"], asked["state"], asked["journal"]["role"]) == (first["session"], "COMPLETED",
                                                                             "destination")
