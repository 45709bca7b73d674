#!/usr/bin/env python3
"""Benchmark of live migration: the same test guest over several data paths, in one run.

Run: .venv/bin/python bench/migration.py [--sizes 256M:96M,1G:512M,2G:1G] [--rounds 1]

Rows: plaintext QEMU→QEMU (one TCP channel, and multifd ×4), QEMU's own x509 TLS (one channel and
multifd ×4), and ours — two real `quantavirt agent` processes on 127.0.0.x with mutual trust, the
guest carried over the PQC channel (threads 1 and 4). Every path uses the same MigrateFlags, so
QEMU's capabilities/parameters are identical (unlimited bandwidth, 300 ms downtime limit,
auto-converge). Figures per row:

- throughput: RAM bytes transferred × 8 / total time, in Gb/s;
- total time: from the migration request to the guest resuming on the destination, starting the
  destination QEMU included (the agents do that inside a migration, so the direct runs do too);
- downtime: QEMU's own "downtime" from query-migrate on the source;
- pause: source STOP event → destination RESUME event (QEMU's event timestamps, same host clock),
  and pause ÷ max-downtime (the promise: ≤ 1.0);
- for ours, CPU s/GiB: user + system CPU both agents spent during the migration (/proc/<pid>/stat)
  per GiB carried, beside the floor measured in the same run: AES-256-GCM encrypt + decrypt of
  1 MiB records with `cryptography`, one thread, per GiB.

Each is also printed as a ratio to the plaintext multifd anchor measured in the same run, one
table per guest size (--sizes RAM:working-set,...). Floor checks: ours ≥ QEMU TLS (same channel
count) in throughput, our pause ≤ max-downtime, ours' total ≤ 2× plaintext multifd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from qemu.qmp import EventListener
from qemu.qmp.message import Message

from qvplan.contract.flags import MigrateFlags
from qvplan.migration.qmp import configure, event_time
from qvplan.units import parse_size
from qvplan.vmm import QemuProcess, VMSpec, detect_accel
from tests.agents import AgentProc, free_port, guest_vm, mutual_trust
from tests.migration.helpers import wait_outcome

DEFAULT_SIZES = "256M:96M,1G:512M,2G:1G"
WARMUP = 2.0  # seconds the guest runs (dirtying its working set) before each migration
MAX_DOWNTIME = 0.3
DEFAULT_TIMEOUT = 300.0
MIGRATION_TIMEOUT = DEFAULT_TIMEOUT  # --timeout
TOTAL_GOAL = 2.0  # ours' total time ÷ plaintext multifd
FLOOR_SAMPLE = 256 << 20  # bytes of AES-GCM timed for the CPU floor


def guest(memory: str = "256M", working_set: str = "96M") -> dict[str, Any]:
    return {"name": "vm-1", "memory": memory, "vcpus": 1,
            "guest": {"test": {"working_set": working_set, "pace": 0, "marker_every": 16}}}


GUEST = guest()  # the bench's own size (bench/interruption.py uses it)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def aes_floor() -> float:
    """CPU seconds per GiB of AES-256-GCM encrypt + decrypt of 1 MiB records, one thread, into
    reused buffers (a fresh 1 MiB object per call costs page faults of its own: 5× here)."""
    aead = AESGCM(AESGCM.generate_key(256))
    record = os.urandom(1 << 20)
    sealed, opened = bytearray(len(record) + 16), bytearray(len(record))
    best = float("inf")
    for _ in range(3):  # best of 3: the floor is what the machine can do, not what load left
        t = time.process_time()
        for seq in range(FLOOR_SAMPLE >> 20):
            nonce = seq.to_bytes(12, "big")
            aead.encrypt_into(nonce, record, b"hdr00", sealed)
            aead.decrypt_into(nonce, sealed, b"hdr00", opened)
        best = min(best, time.process_time() - t)
    return best * (1 << 30) / FLOOR_SAMPLE


@dataclass
class Row:
    name: str
    transferred: int = 0  # bytes
    total: float = 0.0  # seconds
    downtime: float | None = None  # seconds (QEMU)
    pause: float | None = None  # seconds (STOP → RESUME)
    note: str = ""
    cpu: float | None = None  # agents' CPU seconds during the migration (ours only)
    # rounds that ended in a forced stop-and-copy (--max-iterations reached): that pause holds all
    # that was still dirty, which no downtime limit bounds (ours only)
    forced: int = 0

    @property
    def cpu_per_gib(self) -> float | None:
        return self.cpu / (self.transferred / 2**30) if self.cpu is not None and self.transferred else None

    @property
    def measured(self) -> bool:
        return self.total > 0

    @property
    def gbps(self) -> float:
        return self.transferred * 8 / self.total / 1e9 if self.total else 0.0


# -- QEMU's TLS: a throwaway CA, server and client certificates --------------------------------


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_tls_dir(base: Path) -> Path:
    """The file names QEMU's tls-creds-x509 expects: ca-cert, server-cert/key, client-cert/key."""
    base.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qvplan bench CA")])
    ca = _cert("qvplan bench CA", ca_key, ca_name, ca_key, ca=True)
    (base / "ca-cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"bench-{role}", key, ca_name, ca_key, ca=False)
        (base / f"{role}-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (base / f"{role}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        os.chmod(base / f"{role}-key.pem", 0o600)
    return base


# -- direct QEMU → QEMU -------------------------------------------------------------------------


async def _until(what: str, check: Any, timeout: float | None = None, poll: float = 0.005) -> Any:
    deadline = time.monotonic() + (timeout or MIGRATION_TIMEOUT)
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


async def resume_when_loaded(dst: QemuProcess, loads: EventListener, name: str) -> Message:
    """`cont` on the destination the moment its MIGRATION event (from `loads`, a listener taken
    before `migrate`) says it loaded everything, as the agents do; the RESUME event. Waiting for
    the event rather than polling query-migrate keeps a poll interval out of the anchor's pause."""
    while (status := (await asyncio.wait_for(loads.get(), MIGRATION_TIMEOUT))["data"]["status"]) != "completed":
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"{name}: destination reports {status}")
    with dst.listener("RESUME") as resumes:
        await dst.execute("cont")
        return await asyncio.wait_for(resumes.get(), 10)


async def source_completed(src: QemuProcess, name: str) -> dict[str, Any]:
    """The source's query-migrate once it says completed (it may lag the destination's resume)."""

    async def done() -> dict[str, Any] | None:
        info = await src.execute("query-migrate")
        if info.get("status") in ("failed", "cancelled"):
            raise RuntimeError(f"{name}: source reports {info.get('status')}: {info.get('error-desc')}")
        return info if info.get("status") == "completed" else None

    result: dict[str, Any] = await _until("the source to complete", done)
    return result


async def _add_tls(proc: QemuProcess, tls_dir: Path, endpoint: str) -> None:
    await proc.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(tls_dir),
                                      "endpoint": endpoint, "verify-peer": True})
    params: dict[str, Any] = {"tls-creds": "tls0"}
    if endpoint == "client":
        params["tls-hostname"] = "localhost"
    await proc.execute("migrate-set-parameters", params)


async def direct(name: str, base: Path, accel: str, threads: int, tls_dir: Path | None,
                 procs: list[QemuProcess], vm: dict[str, Any] = GUEST) -> Row:
    spec = VMSpec.load(vm)
    flags = MigrateFlags(threads=threads)
    tag = f"{threads}{'-tls' if tls_dir else ''}"
    src = QemuProcess(spec, base / f"src-{tag}", accel)
    dst = QemuProcess(spec, base / f"dst-{tag}", accel)
    procs += [src, dst]
    await src.start()
    await src.wait_markers(0, timeout=60)
    await asyncio.sleep(WARMUP)

    with src.listener("STOP") as stops:
        t0 = time.monotonic()
        await dst.start(incoming="defer", paused=True)
        await configure(src.qmp, flags)
        await configure(dst.qmp, flags)
        if tls_dir:
            await _add_tls(src, tls_dir, "client")
            await _add_tls(dst, tls_dir, "server")
        port = free_port("127.0.0.1")
        with dst.listener("MIGRATION") as loads:
            await dst.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
            await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            resume = await resume_when_loaded(dst, loads, name)
        total = time.monotonic() - t0
        info = await source_completed(src, name)
        stop = await asyncio.wait_for(stops.get(), 10)
    row = Row(name, transferred=int(info["ram"]["transferred"]), total=total,
              downtime=info.get("downtime", 0) / 1000, pause=event_time(resume) - event_time(stop))
    await dst.wait_markers(0, timeout=30)  # the guest really runs over there
    await src.stop()
    await dst.stop()
    return row


async def direct_rows(base: Path, accel: str, vm: dict[str, Any], tls: bool = True) -> list[Row]:
    procs: list[QemuProcess] = []
    rows: list[Row] = []
    try:
        rows.append(await direct("plaintext direct, 1 channel", base, accel, 1, None, procs, vm))
        rows.append(await direct("plaintext direct, multifd 4", base, accel, 4, None, procs, vm))
        tls_dir = make_tls_dir(base / "tls")
        for threads, label in ((1, "QEMU TLS x509, 1 channel"), (4, "QEMU TLS x509, multifd 4")):
            if not tls:
                break
            try:
                rows.append(await direct(label, base, accel, threads, tls_dir, procs, vm))
            except Exception as err:  # TLS is optional: report it, keep the rest of the table
                rows.append(Row(label, note=f"not measured ({err})"))
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                await proc.stop(graceful=False)
    return rows


# -- ours: two agents over the PQC channel -------------------------------------------------------


def start_guest(agent: AgentProc, vm: dict[str, Any] = GUEST) -> None:
    test = vm["guest"]["test"]
    agent.api("POST", "vms", guest_vm("vm-1", memory=vm["memory"], **test))
    agent.api("POST", "vms/vm-1/start", {})
    agent.wait_markers("vm-1", 0)
    time.sleep(WARMUP)


def _agents_cpu(*agents: AgentProc) -> float:
    return sum(cpu_seconds(a.proc.pid) for a in agents if a.proc is not None)


def ours(name: str, src: AgentProc, dst: AgentProc, threads: int, vm: dict[str, Any] = GUEST) -> Row:
    start_guest(src, vm)
    cpu0 = _agents_cpu(src, dst)
    src.api("POST", "vms/vm-1/migrate", {"dest": dst.migration, "flags": {"threads": threads}})
    status = wait_outcome(src, "vm-1", MIGRATION_TIMEOUT)
    cpu = _agents_cpu(src, dst) - cpu0
    if status["state"] != "COMPLETED":
        raise RuntimeError(f"{name}: {status['state']}: {status.get('error')} — {status.get('fix')}")
    dst.wait_markers("vm-1", 0, timeout=30)
    dst.api("POST", "vms/vm-1/stop", {})
    dst.api("DELETE", "vms/vm-1")
    with contextlib.suppress(Exception):
        src.api("DELETE", "vms/vm-1")  # normally already forgotten after a completed migration
    return Row(name, transferred=int(status["transferred"]), total=float(status["elapsed"]),
               downtime=status.get("downtime"), pause=status.get("pause"), cpu=cpu,
               forced=int(bool(status.get("forced_stop_and_copy"))))


def _kill_leftover_qemu(root: Path) -> None:
    """QEMU outlives its agent on purpose; kill (by pid) any QEMU still owning a pidfile under root."""
    for pidfile in root.rglob("qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if str(pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def agent_rows(base: Path, vm: dict[str, Any] = GUEST) -> list[Row]:
    net = 200 + os.getpid() % 50
    agents = [AgentProc(name, f"127.0.{net}.{i + 2}", base / name, 0, 0) for i, name in enumerate(("hv-a", "hv-b"))]
    for agent in agents:
        agent.api_port, agent.mig_port = free_port(agent.address), free_port(agent.address)
    try:
        for agent in agents:
            agent.start()
        a, b = agents
        mutual_trust(a, b)
        return [ours("ours (PQC), 1 channel", a, b, 1, vm), ours("ours (PQC), 4 channels", a, b, 4, vm)]
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                for vm in agent.api("GET", "vms", timeout=10):
                    if vm["state"] == "running":
                        agent.api("POST", f"vms/{vm['name']}/stop", {}, timeout=20)
            agent.stop()
        _kill_leftover_qemu(base)


# -- the table -------------------------------------------------------------------------------------


def _ratio(value: float | None, anchor: float | None) -> str:
    return f"×{value / anchor:.2f}" if value is not None and anchor else "-"


def _ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "-"


def _forced(r: Row) -> str:
    return f"  (forced stop-and-copy in {r.forced} round{'s' if r.forced > 1 else ''})" if r.forced else ""


def render(rows: list[Row], anchor: Row, floor: float) -> str:
    head = (f"{'path':30} {'Gb/s':>6} {'vs':>6} {'total s':>8} {'vs':>6} {'downtime ms':>12} {'vs':>6}"
            f" {'pause ms':>9} {'vs':>6} {'÷max':>5} {'GiB sent':>8} {'CPU s/GiB':>9} {'÷floor':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.measured:
            lines.append(f"{r.name:30} {r.note or 'not measured'}")
            continue
        per_gib = r.cpu_per_gib
        cpu = f" {per_gib:9.2f} {per_gib / floor:6.1f}" if per_gib is not None else ""
        promise = f"{r.pause / MAX_DOWNTIME:5.2f}" if r.pause is not None else "    -"
        lines.append(
            f"{r.name:30} {r.gbps:6.2f} {_ratio(r.gbps, anchor.gbps):>6}"
            f" {r.total:8.2f} {_ratio(r.total, anchor.total):>6}"
            f" {_ms(r.downtime):>12} {_ratio(r.downtime, anchor.downtime):>6}"
            f" {_ms(r.pause):>9} {_ratio(r.pause, anchor.pause):>6} {promise}"
            f" {r.transferred / 2**30:8.2f}{cpu}{'  ' + r.note if r.note else ''}{_forced(r)}")
    lines.append("(vs = ratio to plaintext direct, multifd 4; total = request → guest resumed on the destination; "
                 "÷max = pause ÷ max-downtime;")
    lines.append(f" CPU s/GiB = both agents' user+system CPU per GiB carried; floor = AES-256-GCM encrypt+decrypt "
                 f"{floor:.3f} s/GiB, this run)")
    return "\n".join(lines)


def spread(rounds: list[list[Row]], name: str) -> str:
    """min–max of total time and pause over the rounds, for the note."""
    rows = [r for rs in rounds for r in rs if r.name == name and r.measured]
    if len(rows) < 2:
        return ""
    totals = [r.total for r in rows]
    pauses = [r.pause * 1000 for r in rows if r.pause is not None]
    text = f"{name}: total {min(totals):.2f}–{max(totals):.2f} s"
    if pauses:
        text += f", pause {min(pauses):.0f}–{max(pauses):.0f} ms"
    cpus = [r.cpu_per_gib for r in rows if r.cpu_per_gib is not None]
    if cpus:
        text += f", CPU {min(cpus):.2f}–{max(cpus):.2f} s/GiB"
    return text


def floor_checks(rows: list[Row]) -> list[str]:
    by_name = {r.name: r for r in rows}
    out = []
    for threads, ours_name, tls_name in ((1, "ours (PQC), 1 channel", "QEMU TLS x509, 1 channel"),
                                         (4, "ours (PQC), 4 channels", "QEMU TLS x509, multifd 4")):
        mine, tls = by_name.get(ours_name), by_name.get(tls_name)
        if mine is None or not mine.measured:
            out.append(f"floor ({threads} ch): ours not measured — FAIL")
            continue
        if tls is None or not tls.measured:
            out.append(f"floor ({threads} ch): QEMU TLS not measured — throughput floor not checked")
        else:
            ok = mine.gbps >= tls.gbps
            out.append(f"floor ({threads} ch): ours {mine.gbps:.2f} Gb/s ≥ QEMU TLS {tls.gbps:.2f} Gb/s — "
                       f"{'PASS' if ok else 'FAIL'}")
            if tls.pause is not None:
                ok = mine.pause is not None and mine.pause <= tls.pause
                out.append(f"floor ({threads} ch): ours pause {_ms(mine.pause)} ms ≤ QEMU TLS pause "
                           f"{_ms(tls.pause)} ms — {'PASS' if ok else 'FAIL'}")
        ok = mine.pause is not None and mine.pause <= MAX_DOWNTIME
        out.append(f"floor ({threads} ch): ours pause {_ms(mine.pause)} ms ≤ max-downtime "
                   f"{MAX_DOWNTIME * 1000:.0f} ms — {'PASS' if ok else 'FAIL'}{_forced(mine)}")
        anchor = by_name.get("plaintext direct, multifd 4")
        if anchor is not None and anchor.measured:
            ratio = mine.total / anchor.total
            out.append(f"goal ({threads} ch): ours total {mine.total:.2f} s ÷ plaintext multifd {anchor.total:.2f} s "
                       f"= {ratio:.2f} ≤ {TOTAL_GOAL:g} — {'PASS' if ratio <= TOTAL_GOAL else 'FAIL'}")
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def combine(rounds: list[list[Row]]) -> list[Row]:
    """One row per path: the median of each figure over the rounds that measured it."""
    by_name: dict[str, list[Row]] = {}
    for rows in rounds:
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
    out = []
    for name, rows in by_name.items():
        measured = [r for r in rows if r.measured]
        if not measured:
            out.append(rows[0])
            continue
        out.append(Row(name, transferred=int(statistics.median(r.transferred for r in measured)),
                       total=statistics.median(r.total for r in measured),
                       downtime=_median([r.downtime for r in measured]), pause=_median([r.pause for r in measured]),
                       cpu=_median([r.cpu for r in measured]), forced=sum(r.forced for r in measured),
                       note=f"{len(measured)}/{len(rows)} rounds" if len(measured) < len(rows) else ""))
    return out


ORDER = ["plaintext direct, 1 channel", "plaintext direct, multifd 4", "ours (PQC), 1 channel",
         "ours (PQC), 4 channels", "QEMU TLS x509, 1 channel", "QEMU TLS x509, multifd 4"]


def parse_sizes(text: str) -> list[tuple[str, str]]:
    """"256M:96M,1G:512M" → [("256M", "96M"), ("1G", "512M")] (guest RAM : working set)."""
    out = []
    for item in text.split(","):
        memory, _, working_set = item.strip().partition(":")
        parse_size(memory), parse_size(working_set)  # refuse what the guest could not take, before booting
        out.append((memory, working_set))
    return out


def run_size(tmp: Path, memory: str, working_set: str, rounds: int, accel: str, tls: bool) -> bool:
    vm = guest(memory, working_set)
    results: list[list[Row]] = []
    for n in range(rounds):  # rounds interleave the paths, so load spikes hit all of them
        base = tmp / f"{memory}-round-{n}"
        rows = asyncio.run(direct_rows(base / "direct", accel, vm, tls))
        try:
            rows += agent_rows(base / "agents", vm)
        except Exception as err:
            rows += [Row("ours (PQC), 1 channel", note=f"not measured ({err})"),
                     Row("ours (PQC), 4 channels", note=f"not measured ({err})")]
        results.append(rows)
    rows = combine(results)
    rows.sort(key=lambda r: ORDER.index(r.name))
    anchor = rows[1]
    floor = aes_floor()
    print(f"\nLive migration, guest {memory} RAM / {working_set} working set (pace 0), accel={accel}, "
          f"downtime-limit {MAX_DOWNTIME * 1000:.0f} ms, bandwidth unlimited, auto-converge on; "
          f"medians of {rounds} round{'s' if rounds > 1 else ''}")
    print(render(rows, anchor, floor))
    for line in floor_checks(rows):
        print(line)
    for name in ORDER:
        if text := spread(results, name):
            print(f"spread: {text}")
    sys.stdout.flush()
    return anchor.measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"guest RAM:working set per table, comma-separated (default {DEFAULT_SIZES})")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every path per size; figures are medians")
    parser.add_argument("--no-tls", action="store_true", help="leave out QEMU's TLS rows (quicker)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds a migration may take, else its row is unmeasured (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args()
    global MIGRATION_TIMEOUT
    MIGRATION_TIMEOUT = args.timeout
    accel = detect_accel()
    started = time.monotonic()
    ok = True
    with tempfile.TemporaryDirectory(prefix="qv-bench-mig-") as tmp:
        for memory, working_set in parse_sizes(args.sizes):
            ok = run_size(Path(tmp), memory, working_set, args.rounds, accel, not args.no_tls) and ok
    print(f"benchmark wall time: {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
