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


def _cgroup_memory(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes allowed by a cgroup v2 memory limit (`memory.max`), if one is set."""
    try:
        text = (root / "memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_allocation(cpus: int, env: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(bytes this run may use, where that number comes from): the smallest of SLURM's
    allocation, the cgroup limit of a container or job, and the machine's memory."""
    candidates = [(_machine_memory(), "machine memory")]
    per_node, per_cpu = env.get("SLURM_MEM_PER_NODE", ""), env.get("SLURM_MEM_PER_CPU", "")
    if per_node.isdigit() and int(per_node) > 0:
        candidates.append((int(per_node) * 2**20, "SLURM_MEM_PER_NODE"))
    elif per_cpu.isdigit() and int(per_cpu) > 0:
        candidates.append((int(per_cpu) * 2**20 * cpus, "SLURM_MEM_PER_CPU x CPUs"))
    limit = _cgroup_memory()
    if limit:
        candidates.append((limit, "cgroup memory limit"))
    return min(candidates)


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the arrays of the images in flight may take together (see `plan_memory`)."""

    total: int  # --mem-mb or the allocation
    source: str
    for_images: int  # total minus what the process and the networks already hold

    def describe(self) -> str:
        return (
            f"memory budget {self.total / 2**30:.1f} GiB ({self.source}), "
            f"{self.for_images / 2**30:.1f} GiB of it for the arrays of images in flight"
        )


def plan_memory(
    mem_mb: int | None, cpus: int, held_bytes: int, env: Mapping[str, str] = os.environ
) -> MemoryBudget:
    """Memory for images: --mem-mb (or the allocation) minus `held_bytes` (the process as it
    stands plus the networks it will load), never below a quarter of the total, so a small
    budget still lets small images through one at a time."""
    allowed, source = memory_allocation(cpus, env)
    total = min(mem_mb * 2**20, allowed) if mem_mb else allowed
    if mem_mb:
        source = "--mem-mb" if mem_mb * 2**20 <= allowed else f"--mem-mb capped to the {source}"
    return MemoryBudget(total, source, max(total - held_bytes, total // 4))


def process_rss() -> int:
    """Resident bytes of this process now (Linux; 0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
