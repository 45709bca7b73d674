"""The client of the lab's VM network: talks to a Linux test guest and says what it saw.

    python -m qvplan.lab.probe ADDRESS [--interval 0.001] [--tcp-every 0.05]
    python -m qvplan.lab.probe ADDRESS --control verify|halt     (the guest's answer)

Run inside the client namespace. Until its stdin closes it sends a UDP datagram with a sequence
number every `interval` to the guest's UDP echo (port 7), and over ONE TCP connection to the
guest's echo server (port 7) a line every `tcp-every`, checking each comes back intact. Then it
prints one JSON object: per protocol sent / answered, the longest gap between answers (ms), and
for TCP whether the connection survived and the bytes echoed intact.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

ECHO_PORT = 7
CONTROL_PORT = 8
DATAGRAM = struct.Struct("!Qd")  # sequence number, send time


@dataclass
class Seen:
    sent: int = 0
    answered: int = 0
    longest_gap_ms: float = 0.0
    gap_from: float | None = None  # wall time (time.time) of the answer that began the longest gap
    gap_to: float | None = None  # ... and of the one that ended it
    errors: list[str] = field(default_factory=list)
    _last: float | None = None
    _last_wall: float | None = None

    def answer(self, now: float) -> None:
        self.answered += 1
        wall = time.time()
        if self._last is not None and (now - self._last) * 1000 > self.longest_gap_ms:
            self.longest_gap_ms = (now - self._last) * 1000
            self.gap_from, self.gap_to = self._last_wall, wall
        self._last, self._last_wall = now, wall

    def report(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("_last")
        out.pop("_last_wall")
        out["longest_gap_ms"] = round(self.longest_gap_ms, 1)
        return out


def udp(address: str, interval: float, stop: threading.Event, seen: Seen) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((address, ECHO_PORT))
    sock.settimeout(0.05)
    answered: set[int] = set()

    def receive() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(64)
            except TimeoutError:
                continue
            except OSError:  # e.g. ICMP unreachable while the guest moves
                continue
            if len(data) == DATAGRAM.size:
                seq, _ = DATAGRAM.unpack(data)
                if seq not in answered and seq < seen.sent:
                    answered.add(seq)
                    seen.answer(time.monotonic())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            sock.send(DATAGRAM.pack(seen.sent, time.time()))
        except OSError:
            pass
        seen.sent += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    reader.join(1)


def tcp(address: str, every: float, stop: threading.Event, seen: Seen, out: dict[str, object]) -> None:
    try:
        conn = socket.create_connection((address, ECHO_PORT), timeout=10)
    except OSError as err:
        seen.errors.append(f"connect: {err}")
        out["survived"] = False
        return
    conn.settimeout(30)  # a move pauses the guest for far less
    sent_bytes = echoed = 0
    intact = True
    try:
        while not stop.is_set():
            line = f"qv {seen.sent} {os.urandom(12).hex()}\n".encode()
            conn.sendall(line)
            seen.sent += 1
            sent_bytes += len(line)
            got = b""
            while len(got) < len(line):
                chunk = conn.recv(len(line) - len(got))
                if not chunk:
                    raise ConnectionError("closed by the guest")
                got += chunk
            echoed += len(got)
            intact = intact and got == line
            seen.answer(time.monotonic())
            time.sleep(every)
        out["survived"] = True
    except OSError as err:
        seen.errors.append(f"{type(err).__name__}: {err}")
        out["survived"] = False
    finally:
        conn.close()
    out.update(sent_bytes=sent_bytes, echoed_bytes=echoed, intact=intact)


def control(address: str, command: str) -> int:
    try:
        with socket.create_connection((address, CONTROL_PORT), timeout=60) as conn:
            conn.sendall(command.encode() + b"\n")
            answer = conn.makefile().readline().strip()
    except OSError as err:
        print(f"control {command}: {err}", file=sys.stderr)
        return 1
    print(answer)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qvplan.lab.probe")
    parser.add_argument("address")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between UDP probes")
    parser.add_argument("--tcp-every", type=float, default=0.05, help="seconds between TCP lines")
    parser.add_argument("--no-tcp", action="store_true")
    parser.add_argument("--control", help="send this command to the guest's control port and print its answer")
    args = parser.parse_args(argv)
    if args.control:
        return control(args.address, args.control)
    stop = threading.Event()
    udp_seen, tcp_seen, tcp_out = Seen(), Seen(), {}
    threads = [threading.Thread(target=udp, args=(args.address, args.interval, stop, udp_seen), daemon=True)]
    if not args.no_tcp:
        threads.append(threading.Thread(target=tcp, args=(args.address, args.tcp_every, stop, tcp_seen, tcp_out),
                                        daemon=True))
    for t in threads:
        t.start()
    print("probing", flush=True)
    sys.stdin.read()  # until the controller closes our stdin
    stop.set()
    for t in threads:
        t.join(35)
    report: dict[str, object] = {"udp": udp_seen.report()}
    if not args.no_tcp:
        report["tcp"] = {**tcp_seen.report(), **tcp_out}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
