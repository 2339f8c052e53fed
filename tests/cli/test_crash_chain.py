"""An exception chain that loops back on itself is still classified (no hang)."""

from __future__ import annotations

import errno

from bids_app.plumbing.crash import disk_error


def test_a_context_cycle_is_not_a_disk_error_and_does_not_hang():
    first, second = KeyError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert disk_error(first) is None


def test_a_full_disk_behind_other_errors_is_found():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/x.nii.gz")
    wrapper = RuntimeError("writer failed")
    wrapper.__cause__ = full
    found = disk_error(wrapper)
    assert found is not None and found.code == 74 and "/out/x.nii.gz" in str(found)
