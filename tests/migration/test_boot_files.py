"""Phase 1 for a kernel boot: the destination must hold the kernel and initrd (pure)."""

from __future__ import annotations

from qvplan.migration.checks import check_boot_files


def test_boot_files_must_exist_on_the_destination() -> None:
    there = {"/img/vmlinuz"}
    assert check_boot_files(["/img/vmlinuz"], there.__contains__) is None
    err = check_boot_files(["/img/vmlinuz", "/img/initrd.img"], there.__contains__)
    assert err is not None and err.cause == "Migration rejected: boot file not found on destination (/img/initrd.img)"
    assert err.fix and "same pool" in err.fix
