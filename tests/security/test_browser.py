"""A web page in a real headless Chromium tries to drive the agent: a simple form POST and `fetch`
with `text/plain` (the requests a page may send anywhere without asking) to define a VM, stop
one, reach the monitor and force a key. The agent refuses each (the TCP API is read-only and
answers no request with an Origin); meanwhile the spec's `curl -N` on a migration's events, run
as nobody, streams to the end."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qvplan.pqc import HostIdentity

from ..agents import free_port, guest_vm, mutual_trust
from ..migration.helpers import wait_outcome
from .outside import ATTACKER, snapshot

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="a root agent, attacked as nobody: needs root"),
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup)")]

PAGE = """<!doctype html>
<html><head><title>cats</title></head><body>
<iframe name="sink"></iframe>
<form id="define" method="POST" enctype="text/plain" target="sink" action="{api}/api/v1/vms">
  <input name='{{"name": "evil-form", "memory": "64M", "pad": "' value='"}}'>
</form>
<form id="stop" method="POST" target="sink" action="{api}/api/v1/vms/vm-1/stop"></form>
<pre id="out"></pre>
<script>
const api = "{api}";
const say = (line) => {{ document.getElementById("out").textContent += line + "\\n"; }};
async function post(path, body) {{
  try {{
    const r = await fetch(api + path, {{method: "POST", mode: "no-cors", body: JSON.stringify(body),
                                        headers: {{"Content-Type": "text/plain"}}}});
    say("fetch " + path + " " + r.type);
  }} catch (e) {{ say("fetch " + path + " error " + e); }}
}}
(async () => {{
  document.getElementById("define").submit();
  await new Promise((ok) => setTimeout(ok, 300));
  document.getElementById("stop").submit();
  await new Promise((ok) => setTimeout(ok, 300));
  await post("/api/v1/vms", {{"name": "evil-fetch", "memory": "64M"}});
  await post("/api/v1/vms/vm-1/stop", {{}});
  await post("/api/v1/vms/vm-1/monitor", {{"command": "quit"}});
  await post("/api/v1/pqc/trust", {{"name": "evil", "public_key": "{key}", "force": true}});
  say("done");
}})();
</script></body></html>
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local web site (another origin than the agent's) serving the attacker's page."""
    root = tmp_path / "site"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port("127.0.0.1")), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def chromium(url: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as it comes; every proxied request goes to a closed port, so only loopback
    (which Chromium never proxies) is reached."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={home}/profile",
         "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})


def test_a_web_page_cannot_drive_the_agent_and_curl_still_streams(make_agent, site, tmp_path: Path) -> None:
    a, b = make_agent("hv-a"), make_agent("hv-b")
    mutual_trust(a, b)
    a.api("POST", "vms", guest_vm("vm-1", memory="64M", working_set="2M"))
    a.api("POST", "vms/vm-1/start", {})
    a.wait_markers("vm-1", 0)
    before = snapshot(a)

    root, origin = site
    key = base64.b64encode(HostIdentity.load_or_create(tmp_path / "rogue").public_key).decode()
    (root / "index.html").write_text(PAGE.format(api=f"http://{a.address}:{a.api_port}", key=key))
    page = chromium(f"{origin}/index.html", tmp_path)
    assert page.returncode == 0, page.stderr[-2000:]
    out = page.stdout
    assert "done" in out, out[-2000:]  # the page ran to its end: every request was sent
    assert snapshot(a) == before  # vm-1 still running, nothing defined, no key, QEMU the same
    log = a.log_tail(400)
    assert "refused POST /api/v1/vms (forbidden): the agent API does not answer web pages" in log
    assert "refused POST /api/v1/vms/vm-1/stop (forbidden)" in log

    # The spec's `curl -N` on the migration's events, as any local user: it streams to the end.
    flags = {"threads": 1, "bandwidth": "4M", "max_iterations": 4}  # a few seconds: long enough to watch
    a.api("POST", "vms/vm-1/migrate", {"dest": b.migration, "flags": flags})
    curl = subprocess.Popen(
        ["runuser", "-u", ATTACKER, "--", "curl", "-sSN",
         f"http://{a.address}:{a.api_port}/api/v1/vms/vm-1/migrate/events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = wait_outcome(a, "vm-1")
    stdout, stderr = curl.communicate(timeout=30)
    # Under TCG, QEMU before 9.0 may lose guest writes (live/ramcheck.py): such a copy is refused
    # and the guest stays here. Either outcome must reach the stream's end.
    refused_copy = (status["state"], status.get("code")) == ("FAILED", "ram-mismatch")
    assert status["state"] == "COMPLETED" or refused_copy, (status.get("code"), status.get("error"))
    assert curl.returncode == 0, stderr
    events = [json.loads(line[5:]) for line in stdout.splitlines() if line.startswith("data:")]
    assert events[0]["event"] == "status" and events[0]["state"] == "MIGRATING", stdout[:1000]
    assert events[-1]["event"] == ("failed" if refused_copy else "completed") and len(events) > 2, stdout[-1000:]
    assert [v["name"] for v in (a if refused_copy else b).api("GET", "vms")] == ["vm-1"]
