"""What a run may use: its devices, its CPU budget and how that budget is split.

fMRIPrep's convention: `--nprocs` is the whole CPU budget of the run, `--omp-nthreads` the
threads of one network worker. Defaults come from what the process is really allowed (SLURM's
allocation, the cgroup CPU quota of a container, the CPU affinity), not from the machine's
core count, which on a shared node is a lie.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = "auto, cpu, cuda (every visible GPU), cuda:N, or a comma list (cuda:0,cuda:1)"


def parse_devices(text: str) -> tuple[str, ...]:
    """`cuda:0,cuda:1` -> ("cuda:0", "cuda:1"); ValueError naming what is wrong.

    Repeating `cpu` (`cpu,cpu`) asks for several CPU network workers: useful to test the
    scheduling without a GPU, rarely faster than one worker with more threads.
    """
    items = tuple(part.strip().lower() for part in text.split(","))
    bad = [item for item in items if not DEVICE_RE.match(item)]
    if bad or not items:
        raise ValueError(f"{text!r}: expected {DEVICE_HELP}")
    if len(items) > 1 and "auto" in items:
        raise ValueError(f"{text!r}: auto cannot be combined with other devices")
    return items


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by a cgroup v2 quota (`cpu.max` = "quota period"), if one is set."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def cpu_allocation(env: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(CPUs this process may use, where that number comes from)."""
    try:
        affinity = len(os.sched_getaffinity(0))
        source = "CPU affinity"
    except AttributeError:  # not Linux
        affinity, source = os.cpu_count() or 1, "cpu_count"
    candidates = [(affinity, source)]
    slurm = env.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        candidates.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    quota = _cgroup_cpus()
    if quota:
        candidates.append((max(1, math.floor(quota)), "cgroup CPU quota"))
    return min(candidates)


@dataclass(frozen=True)
class Budget:
    """How a run spends its CPUs: network workers x threads, and images in flight."""

    cpus: int
    source: str
    network_workers: int
    network_threads: int
    in_flight: int

    def describe(self, devices: tuple[str, ...]) -> str:
        return (
            f"CPU budget {self.cpus} ({self.source}): {self.network_workers} network "
            f"worker(s) on {', '.join(devices)} x {self.network_threads} thread(s); up to "
            f"{self.in_flight} image(s) in flight"
        )


def plan_budget(
    devices: tuple[str, ...],
    nprocs: int | None,
    omp_nthreads: int | None,
    in_flight: int | None = None,
    pipeline: bool = True,
    env: Mapping[str, str] = os.environ,
) -> Budget:
    """Split the CPU budget between network workers and the images' CPU stages.

    A CPU network worker gets the whole budget by default (the CPU stages of the next image
    then share the cores, which on 2 cores is still faster than leaving one idle); a GPU
    worker needs one thread to feed its device. Images in flight: two per network worker,
    so one image's CPU stages run while another's network runs; one when pipelining is off.
    """
    allowed, source = cpu_allocation(env)
    cpus = min(nprocs, allowed) if nprocs else allowed
    if nprocs and nprocs > allowed:
        source = f"--nprocs {nprocs} capped to the {source}"
    elif nprocs:
        source = "--nprocs"
    workers = len(devices)
    on_gpu = all(d.startswith("cuda") for d in devices)
    default_threads = 1 if on_gpu else max(1, cpus // workers)
    threads = min(omp_nthreads or default_threads, cpus)
    flight = 1 if not pipeline or cpus == 1 else in_flight or 2 * workers
    return Budget(cpus, source, workers, threads, max(1, flight))
