"""The agent client's wire (agent/http11.py) against a real socket that answers as scripted."""

from __future__ import annotations

import socket
import threading

import pytest

from qvplan.agent.client import AgentClient, AgentError, AgentUnreachable
from qvplan.agent.http11 import WireError, exchange


def serve_once(answer: bytes) -> tuple[tuple[str, int], list[bytes]]:
    """A TCP server on loopback that reads one request, sends `answer` and closes."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head, _, rest = data.partition(b"\r\n\r\n")
            sizes = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            length = sizes[0] if sizes else 0
            while len(rest) < length:
                rest += conn.recv(4096)
            got.append(head + b"\r\n\r\n" + rest)
            conn.sendall(answer)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[:2], got


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_json_with_content_length_and_the_request_sent():
    addr, got = serve_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                           b'{"a": [1]}\n')
    assert AgentClient(f"{addr[0]}:{addr[1]}").post("vms", {"name": "x"}) == {"a": [1]}
    head, _, body = got[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/vms HTTP/1.1\r\n") and b"Connection: close" in head
    assert body == b'{"name": "x"}'


def test_chunked_events_split_anywhere_are_decoded():
    stream = b'event: progress\ndata: {"i": 1}\n\nevent: completed\ndata: {"event": "completed"}\n\n'
    addr, _ = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                         + chunked(stream[:7], stream[7:30], stream[30:]))
    events = list(AgentClient(f"{addr[0]}:{addr[1]}").events("vms/x/migrate/events"))
    assert events == [{"i": 1, "event": "progress"}, {"event": "completed"}]


def test_error_answer_keeps_status_code_and_fix():
    body = b'{"error": "unknown VM \'x\'", "fix": "see `quantavirt vm list`", "code": "unknown-vm"}'
    addr, _ = serve_once(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body[:9], body[9:]))
    with pytest.raises(AgentError) as err:
        AgentClient(f"{addr[0]}:{addr[1]}").get("vms/x")
    assert (err.value.status, err.value.code, err.value.fix) == (404, "unknown-vm", "see `quantavirt vm list`")


@pytest.mark.parametrize("answer", [b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_what_is_not_the_agent_is_unreachable_in_one_line(answer):
    addr, _ = serve_once(answer)
    with pytest.raises(AgentUnreachable) as err:
        AgentClient(f"{addr[0]}:{addr[1]}", timeout=5).get("host")
    assert err.value.code == "agent-unreachable" and "\n" not in str(err.value)


def test_unix_socket(tmp_path):
    path = str(tmp_path / "api.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")

    threading.Thread(target=run, daemon=True).start()
    assert AgentClient(unix=path).get("vms") == []
    srv.close()
    with pytest.raises(OSError):
        exchange(str(tmp_path / "none.sock"), "GET", "/", None, 1)
    assert issubclass(WireError, OSError)
