"""`--device auto` on a machine without GPU device nodes is the CPU, decided without torch.

A one-subject `--dry-run` (the way CBRAIN and cluster scripts launch a BIDS App per subject)
otherwise spends 2-3 s importing torch just to learn there is no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.run.preflight import GPU_DEVICE_NODES, check_devices, no_gpu_here


def test_no_device_nodes_means_no_gpu(tmp_path):
    assert no_gpu_here(tmp_path)


@pytest.mark.parametrize("node", GPU_DEVICE_NODES)
def test_any_gpu_node_means_torch_is_asked(tmp_path, node):
    (tmp_path / node).touch()
    assert not no_gpu_here(tmp_path)


@pytest.mark.skipif(not no_gpu_here(), reason="this machine has GPU device nodes")
def test_auto_dry_run_never_imports_torch(tmp_path):
    """The whole one-subject dry-run call, as a user types it, with --device auto."""
    ds = tmp_path / "ds"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    (ds / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"")
    code = (
        "import sys\n"
        "from bids_app.cli.main import main\n"
        f"rc = main([{str(ds)!r}, {str(tmp_path / 'out')!r}, 'participant', "
        "'--participant-label', '01', '--dry-run', '--skip-bids-validation', "
        "'--device', 'auto', '--weights', 'demo'])\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.stdout.strip().splitlines()[-1] == "no torch 0", done.stderr[-2000:]
    assert "would segment" in done.stdout
    assert check_devices(("auto",)) == ("cpu",)
