"""The destination's NBD exports of a storage migration, on a real QEMU started paused for an
incoming migration (as the destination agent starts it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from qvplan.migration.storage import exports
from qvplan.vmm import QemuProcess, VMSpec


async def test_unexport_twice_is_fine_as_after_a_restart(tmp_path: Path) -> None:
    """An agent restarted after a commit stops the NBD server again before `cont`; its killed
    predecessor may have stopped it already (bench/chaos.py: the restarted agent then crashed
    on QEMU's "NBD server not running")."""
    pool = tmp_path / "pool"
    pool.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pool / "d.qcow2"), "16M"], check=True)
    spec = VMSpec.load({"name": "ex", "memory": "64M", "guest": {"test": {"working_set": "1M"}},
                        "disks": [{"pool": "default", "file": "d.qcow2", "format": "qcow2"}]})
    proc = QemuProcess(spec, run_dir=tmp_path / "run", accel="tcg", pool_paths={"default": pool})
    try:
        await proc.start(incoming="defer", paused=True)
        sock = proc.run_dir / "nbd.sock"
        await exports.export(proc.qmp, exports.unix_address(sock, proc.qemu_path(sock)), ["disk0"])
        assert [e["id"] for e in await proc.qmp.execute("query-block-exports")] == ["export-disk0"]
        await exports.unexport(proc.qmp)
        assert await proc.qmp.execute("query-block-exports") == []
        await exports.unexport(proc.qmp)  # the server is stopped already: nothing to close, no error
    finally:
        await proc.stop(graceful=False)
