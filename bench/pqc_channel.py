#!/usr/bin/env python3
"""Benchmark of the PQC migration channel: handshake time and record-layer throughput.

Run: .venv/bin/python bench/pqc_channel.py [--size 1G] [--record 1M] [--handshakes 50]

Everything goes over loopback TCP between two processes (the receiver is forked), and every
throughput is printed as a ratio to the anchor measured in the same run: raw AES-256-GCM
encryption of the same records in one thread, no I/O. Targets: handshake median < 10 ms,
channel / raw AES-GCM >= 0.6.

The "migration data path" row is the real one (migration/streams/relay.py): a socket pair
standing for the source QEMU, its relay into the channel, the destination's relay out of it, a
socket pair standing for the destination QEMU. Beside its rate it prints the CPU both processes
spent per GiB, against the floor of the same run (AES-256-GCM encrypt + decrypt of a GiB, one
thread): issue "data-path cost per byte".
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qvplan.migration.streams.relay import relay
from qvplan.pqc import (
    HostIdentity,
    RecordOpener,
    RecordSealer,
    TrustStore,
    accept_channel,
    get_provider,
    open_channel,
)
from qvplan.units import format_size, parse_size

HANDSHAKE_TARGET_MS = 10.0
RATIO_TARGET = 0.6
SOCK_BUF = 4 << 20


def _identities(base: Path) -> tuple[HostIdentity, TrustStore, HostIdentity, TrustStore]:
    ia, ib = HostIdentity.load_or_create(base / "a"), HostIdentity.load_or_create(base / "b")
    ta, tb = TrustStore(base / "a"), TrustStore(base / "b")
    ta.add("bench-b", ib.public_key, force=True)
    tb.add("bench-a", ia.public_key, force=True)
    return ia, ta, ib, tb


# -- the receiving process --------------------------------------------------------------------


def _drain(sock: socket.socket) -> int:
    """Read a stream to its end (a destination QEMU loading), then end ours; the bytes read."""
    buf, got = bytearray(4 << 20), 0
    while n := sock.recv_into(buf):
        got += n
    sock.shutdown(socket.SHUT_WR)
    return got


def _channel_server(base: Path, ready: mp.Queue, relayed: mp.Queue) -> None:
    """Responder: accepts channels; a channel whose first message is 'sink' is drained and timed;
    one whose first is 'relay' is carried by the migration relay into a socket pair, drained there,
    and (bytes, end time, this process's CPU seconds meanwhile) put on `relayed`."""
    _, _, ib, tb = _identities(base)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ch = await accept_channel(reader, writer, identity=ib, trust=tb, hello_extra={"host": "bench-b"})
        request = await ch.recv_json()
        if request == "relay":
            cpu = time.process_time()
            qemu, ours = socket.socketpair()
            local_reader, local_writer = await asyncio.open_unix_connection(sock=ours)
            carried = asyncio.ensure_future(relay(ch, local_reader, local_writer))
            got = await asyncio.to_thread(_drain, qemu)
            done = time.perf_counter()
            await carried
            qemu.close()
            relayed.put((got, done, time.process_time() - cpu))
            return
        if request == "sink":
            total = 0
            while (data := await ch.recv()) is not None:
                total += len(data)
            await ch.send_json({"bytes": total, "done": time.perf_counter()})
        await ch.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    asyncio.run(main())


def _relay_sink(secret: bytes, record: int, ready: mp.Queue, result: mp.Queue) -> None:
    """Sans-IO opener fed by recv_into on a blocking socket (what a hand-written relay does)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ready.put(lsock.getsockname()[1])
    conn, _ = lsock.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    opener = RecordOpener(secret, max_record=max(record, 1))
    total = 0
    while not opener.ended:
        view = opener.get_buffer(record + 64)
        n = conn.recv_into(view)
        view.release()
        if not n:
            opener.eof()
        opener.buffer_updated(n)
        while (rec := opener.pull()) is not None:
            total += len(rec[1])
    result.put((total, time.perf_counter()))
    conn.close()


def _raw_sink(ready: mp.Queue, result: mp.Queue, total: int) -> None:
    """Plain TCP, no crypto: the ceiling loopback gives Python at all."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ready.put(lsock.getsockname()[1])
    conn, _ = lsock.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    buf = bytearray(4 << 20)
    got = 0
    while got < total:
        n = conn.recv_into(buf)
        if not n:
            break
        got += n
    result.put((got, time.perf_counter()))
    conn.close()


# -- measurements ------------------------------------------------------------------------------


def raw_aes(data: bytes, record: int) -> float:
    """Bytes/s of AES-256-GCM over `data` in `record`-sized pieces, one thread, best of 3."""
    aead = AESGCM(AESGCM.generate_key(256))
    view = memoryview(data)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, len(view), record):
            aead.encrypt(i.to_bytes(12, "big"), view[i:i + record], b"hdr00")
        best = max(best, len(view) / (time.perf_counter() - t))
    return best


async def handshakes(port: int, ia: HostIdentity, ta: TrustStore, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        ch = await open_channel("127.0.0.1", port, identity=ia, trust=ta, hello_extra={"host": "bench-a"})
        times.append(time.perf_counter() - t)
        await ch.send_json("bye")
        await ch.close()
    return times


async def channel_throughput(port: int, ia: HostIdentity, ta: TrustStore, data: bytes, record: int,
                             total: int) -> float:
    ch = await open_channel("127.0.0.1", port, identity=ia, trust=ta, hello_extra={"host": "bench-a"})
    await ch.send_json("sink")
    view = memoryview(data)
    t = time.perf_counter()
    sent = 0
    while sent < total:
        for i in range(0, len(view), record):
            await ch.send(view[i:i + record])
        sent += len(view)
    await ch.end()
    reply = await ch.recv_json()
    await ch.close()
    assert reply["bytes"] == sent, reply
    return sent / (reply["done"] - t)


def relay_throughput(data: bytes, record: int, total: int) -> float:
    secret = os.urandom(48)
    ready: mp.Queue = mp.Queue()
    result: mp.Queue = mp.Queue()
    proc = mp.Process(target=_relay_sink, args=(secret, record, ready, result))
    proc.start()
    sock = socket.create_connection(("127.0.0.1", ready.get()))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    sealer = RecordSealer(secret, max_record=max(record, 1))
    view = memoryview(data)
    t = time.perf_counter()
    sent = 0
    while sent < total:
        for i in range(0, len(view), record):
            sock.sendall(sealer.seal(view[i:i + record]))
        sent += len(view)
    sock.sendall(sealer.seal_end())
    got, done = result.get()
    proc.join()
    sock.close()
    assert got == sent
    return sent / (done - t)


def _feed(sock: socket.socket, data: bytes, total: int) -> None:
    """Write `total` bytes of `data` (a source QEMU migrating), end the stream, read to the far end's."""
    sent = 0
    while sent < total:
        sock.sendall(data)
        sent += len(data)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1 << 16):
        pass


async def data_path(port: int, ia: HostIdentity, ta: TrustStore, data: bytes, total: int,
                    relayed: mp.Queue) -> tuple[float, float]:
    """(bytes/s, CPU seconds of both processes per GiB) of the migration data path (docstring)."""
    ch = await open_channel("127.0.0.1", port, identity=ia, trust=ta, hello_extra={"host": "bench-a"})
    await ch.send_json("relay")
    cpu = time.process_time()
    qemu, ours = socket.socketpair()
    local_reader, local_writer = await asyncio.open_unix_connection(sock=ours)
    t = time.perf_counter()
    carried = asyncio.ensure_future(relay(ch, local_reader, local_writer))
    await asyncio.to_thread(_feed, qemu, data, total)
    await carried
    qemu.close()
    ours_cpu = time.process_time() - cpu
    got, done, their_cpu = await asyncio.to_thread(relayed.get)
    assert got == total, (got, total)
    return got / (done - t), (ours_cpu + their_cpu) / (got / (1 << 30))


def raw_tcp(data: bytes, total: int) -> float:
    ready: mp.Queue = mp.Queue()
    result: mp.Queue = mp.Queue()
    proc = mp.Process(target=_raw_sink, args=(ready, result, total))
    proc.start()
    sock = socket.create_connection(("127.0.0.1", ready.get()))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    t = time.perf_counter()
    sent = 0
    while sent < total:
        sock.sendall(data)
        sent += len(data)
    got, done = result.get()
    proc.join()
    sock.close()
    return got / (done - t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="bytes to push per throughput run (default 1G)")
    parser.add_argument("--record", default="1M", help="record payload size (default 1M, max 4M)")
    parser.add_argument("--handshakes", type=int, default=50, help="handshakes to time (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs, best kept (default 3)")
    args = parser.parse_args()
    total, record = parse_size(args.size), parse_size(args.record)
    data = os.urandom(64 << 20)
    mp.set_start_method("fork")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ia, ta, _, _ = _identities(base)
        ready: mp.Queue = mp.Queue()
        relayed: mp.Queue = mp.Queue()
        server = mp.Process(target=_channel_server, args=(base, ready, relayed), daemon=True)
        server.start()
        port = ready.get()
        try:
            hs = asyncio.run(handshakes(port, ia, ta, args.handshakes))
            aes = raw_aes(data, record)
            # Loopback throughput on a shared 2-core VM is noisy: best of --repeat runs each.
            chan = max(asyncio.run(channel_throughput(port, ia, ta, data, record, total))
                       for _ in range(args.repeat))
            path, path_cpu = max(asyncio.run(data_path(port, ia, ta, data, total, relayed))
                                 for _ in range(args.repeat))
            floor_cpu = 2 * (1 << 30) / aes  # encrypt + decrypt of a GiB, decrypt taken as fast as encrypt
        finally:
            server.terminate()
        relayed_rate = max(relay_throughput(data, record, total) for _ in range(args.repeat))
        tcp = max(raw_tcp(data, total) for _ in range(args.repeat))

    median_ms = statistics.median(hs) * 1000
    print(f"PQC channel benchmark — provider {get_provider().name}, {os.cpu_count()} CPUs, "
          f"records of {format_size(record)}, {format_size(total)} per run, loopback TCP between two processes")
    print(f"{'measurement':<46} {'value':>12} {'÷ AES-GCM':>10} {'÷ plain TCP':>12}  target")
    verdict = "OK" if median_ms < HANDSHAKE_TARGET_MS else "MISSED"
    label = f"handshake median (n={len(hs)}, ML-KEM-768)"
    print(f"{label:<46} {median_ms:>9.2f} ms {'':>10} {'':>12}  < {HANDSHAKE_TARGET_MS:g} ms {verdict}")
    rows = [("raw AES-256-GCM encrypt, 1 thread, no I/O", aes, False),
            ("SecureChannel send→recv (asyncio)", chan, True),
            ("RecordSealer/Opener relay (blocking sockets)", relayed_rate, True),
            ("migration data path (streams/relay.py)", path, True),
            ("plain TCP, no crypto (loopback ceiling)", tcp, False)]
    for name, rate, targeted in rows:
        ratio = rate / aes
        verdict = f">= {RATIO_TARGET:g} {'OK' if ratio >= RATIO_TARGET else 'MISSED'}" if targeted else ""
        print(f"{name:<46} {rate / 1e6:>7.0f} MB/s {ratio:>10.2f} {rate / tcp:>12.2f}  {verdict}")
    print(f"migration data path, CPU of both processes: {path_cpu:.2f} s/GiB; floor (AES-256-GCM encrypt + "
          f"decrypt, 1 thread) {floor_cpu:.2f} s/GiB: ×{path_cpu / floor_cpu:.1f} (goal ≤ 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
