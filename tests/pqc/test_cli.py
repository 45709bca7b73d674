"""`quantavirt pqc key-export|key-import|status` through click's CliRunner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from qvplan.cli.quantavirt import main


@pytest.fixture(autouse=True)
def _empty_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hermetic: never read the machine's /etc/quantavirt/quantavirt.conf."""
    conf = tmp_path / "quantavirt.conf"
    conf.write_text("")
    monkeypatch.setenv("QUANTAVIRT_CONFIG", str(conf))


def run(state: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--state-dir", str(state), "pqc", *args])
    return result.exit_code, result.output


def test_export_import_status(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    code, out = run(a, "key-export", "host-identity", "--public", "--output", str(tmp_path / "a.pub"))
    assert code == 0, out
    assert stat.S_IMODE((a / "pqc" / "host-identity.key").stat().st_mode) == 0o600
    code, status_a = run(a, "status")
    fp_a = next(line.split()[1] for line in status_a.splitlines() if line.startswith("Identity:"))
    assert "Provider:  cryptography (OpenSSL" in status_a and "Trusted:   none" in status_a

    code, out = run(b, "key-import", "--name", "hv-a", "--input", str(tmp_path / "a.pub"))
    assert code == 0 and out.strip() == f"Imported hv-a: {fp_a}"
    code, out = run(b, "status")
    assert code == 0 and "Trusted:   1 peer" in out
    assert [line.split() for line in out.splitlines() if line.startswith("  ")] == [["hv-a", fp_a]]


def test_export_to_stdout_and_needs_public(tmp_path: Path) -> None:
    code, out = run(tmp_path, "key-export", "host-identity", "--public")
    assert code == 0 and out.startswith("-----BEGIN QVPLAN ML-DSA-65 PUBLIC KEY-----")
    code, out = run(tmp_path, "key-export", "host-identity")
    assert code == 1 and "only the public key can be exported" in out
    code, out = run(tmp_path, "key-export", "vm-key", "--public")
    assert code == 1 and "unknown key 'vm-key'" in out


def test_malformed_file_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    for content in (b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n", b"\xff\xfe binary"):
        bad.write_bytes(content)
        code, out = run(tmp_path / "s", "key-import", "--name", "x", "--input", str(bad))
        assert code == 1
        assert out.startswith(f"Error: {bad}: not an ML-DSA-65 public key file") and out.count("\n") == 1
    code, out = run(tmp_path / "s", "key-import", "--name", "x", "--input", str(tmp_path / "missing.pub"))
    assert code == 1 and "cannot read" in out


def test_name_clash_needs_force(tmp_path: Path) -> None:
    for host in ("a", "c"):
        run(tmp_path / host, "key-export", "host-identity", "--public", "-o", str(tmp_path / f"{host}.pub"))
    state = tmp_path / "b"
    assert run(state, "key-import", "--name", "peer", "--input", str(tmp_path / "a.pub"))[0] == 0
    code, out = run(state, "key-import", "--name", "peer", "--input", str(tmp_path / "c.pub"))
    assert code == 1 and "a different key is already trusted as 'peer'" in out and "--force" in out
    code, out = run(state, "key-import", "--name", "peer", "--input", str(tmp_path / "c.pub"), "--force")
    assert code == 0 and out.startswith("Imported peer: SHA256:")
    _, status = run(state, "status")
    assert out.split()[-1] in status
