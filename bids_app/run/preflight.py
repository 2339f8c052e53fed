"""Before the first image: the devices the run can use, and the memory its networks will hold
(the memory budget for images is what is left)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from bids_app.nnunet.weights import WeightsError, find_checkpoint
from bids_app.plumbing.errors import ExitCode, UserError, one_line


def networks_bytes(weights, workers: int) -> int:
    """Memory the networks will hold: each worker keeps both checkpoints' weights, and a
    load briefly holds a second copy."""
    sizes = 0
    for folder in (weights.step1, weights.step2):
        try:
            sizes += find_checkpoint(Path(folder)).stat().st_size
        except (OSError, TypeError, WeightsError):  # a fake or partial set: count nothing
            continue
    return 2 * sizes * workers


# Device nodes a CUDA-capable torch needs on Linux: NVIDIA's driver, WSL2's GPU bridge, and
# ROCm's (whose torch builds answer torch.cuda too).
GPU_DEVICE_NODES = ("nvidiactl", "nvidia0", "dxg", "kfd")


def no_gpu_here(dev: Path = Path("/dev")) -> bool:
    """True when no GPU can be visible to torch, decided without importing torch (2-3 s).

    Only on Linux, where torch needs the driver's device nodes; anywhere else (or when any node
    is there) we do not know, and torch is asked.
    """
    if not sys.platform.startswith("linux"):
        return False
    return not any((dev / name).exists() for name in GPU_DEVICE_NODES)


def check_devices(specs: Sequence[str]) -> tuple[str, ...]:
    """The devices the run will use, checked before any work (64 when one is unusable).

    Only CUDA needs torch to be asked: a CPU-only run, or `auto` on a machine without GPU
    device nodes, never imports it here (a one-subject --dry-run then takes about a second).
    """
    if all(spec == "cpu" for spec in specs):
        return tuple(specs)
    if all(spec == "auto" for spec in specs) and no_gpu_here():
        return ("cpu",)
    from bids_app.nnunet.model import resolve_devices

    try:
        return tuple(resolve_devices(specs))
    except ValueError as e:
        raise UserError(
            ExitCode.USAGE,
            f"--device {','.join(specs)}: {one_line(e)} (containers need `--gpus all` "
            "with Docker or `--nv` with Apptainer for CUDA)",
        ) from e
