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


_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number


@dataclass(frozen=True)
class Cgroups:
    """The cgroup limits that apply to this process, read where the kernel says it lives.

    `/proc/self/cgroup` names the process's own cgroup (a SLURM job's `.../job_42/step_0`,
    a container's), and every folder from there up to the mount point may set a limit: the
    smallest one applies. cgroup v2 (`0::/path`, files `memory.max` and `cpu.max`) and v1
    (`N:memory:/path`, files `memory.limit_in_bytes`, `cpu.cfs_quota_us`/`cpu.cfs_period_us`)
    are both read. A path that does not exist under the mount (a container that mounts only
    its own cgroup) leaves the mount point itself, which is then that cgroup.
    The paths are fields so that tests can point them at fake trees.
    """

    root: Path = Path("/sys/fs/cgroup")
    proc: Path = Path("/proc/self/cgroup")

    def _folders(self, controller: str) -> list[Path]:
        """Folders whose `controller` limits apply to this process, innermost first."""
        try:
            lines = self.proc.read_text().splitlines()
        except OSError:
            lines = []
        mounts: list[tuple[Path, str]] = []
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hierarchy, controllers, path = parts
            if hierarchy == "0" and not controllers:  # v2 (alone, or hybrid's "unified")
                mounts += [(self.root, path), (self.root / "unified", path)]
            elif controller in controllers.split(","):
                for name in {controller, controllers}:
                    mounts.append((self.root / name, path))
        if not mounts:  # no /proc (or not Linux): the mount point, as v2 or v1 has it
            mounts = [(self.root, "/"), (self.root / controller, "/")]
        folders: list[Path] = []
        for mount, path in mounts:
            inner = mount / path.strip("/")
            chain = [inner, *inner.parents] if path.strip("/") else [mount]
            for folder in chain:
                if folder.is_dir() and folder not in folders:
                    folders.append(folder)
                if folder == mount:
                    break
        return folders

    def memory_limit(self) -> tuple[int, Path] | None:
        """(bytes, the file that sets them): the smallest memory limit, if any."""
        limits = []
        for folder in self._folders("memory"):
            for name in ("memory.max", "memory.limit_in_bytes"):
                value = _read_int(folder / name)
                if value is not None and 0 < value < _UNLIMITED:
                    limits.append((value, folder / name))
        return min(limits) if limits else None

    def cpu_quota(self) -> tuple[float, Path] | None:
        """(CPUs, the file that sets them): the smallest CPU quota, if any."""
        quotas = []
        for folder in self._folders("cpu"):
            try:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    quotas.append((int(quota) / int(period), folder / "cpu.max"))
            except (OSError, ValueError):
                pass
            v1_quota = _read_int(folder / "cpu.cfs_quota_us")
            v1_period = _read_int(folder / "cpu.cfs_period_us")
            if v1_quota is not None and v1_quota > 0 and v1_period:
                quotas.append((v1_quota / v1_period, folder / "cpu.cfs_quota_us"))
        return min(quotas) if quotas else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # missing, "max", or not a number
        return None


def cpu_allocation(
    env: Mapping[str, str] = os.environ, cgroups: Cgroups | None = None
) -> tuple[int, str]:
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
    quota = (cgroups or Cgroups()).cpu_quota()
    if quota:
        candidates.append((max(1, math.floor(quota[0])), f"cgroup CPU quota ({quota[1]})"))
    return min(candidates)


# Resident memory of one idle stage worker process, counted as held in the memory budget:
# 82 MB once it has imported what the vertebral-body and QC stages need, 190 MB between the
# stages of whole-spine images (benchmarks/gpu_node.py, worker_rss_mb). A stage's arrays
# are counted per call.
WORKER_BYTES = 200 * 2**20


@dataclass(frozen=True)
class Budget:
    """How a run spends its CPUs: network workers x threads, images in flight, and the
    worker processes of the stages that hold the GIL (0: they run in the images' threads)."""

    cpus: int
    source: str
    network_workers: int
    network_threads: int
    in_flight: int
    cpu_workers: int = 0

    def describe(self, devices: tuple[str, ...]) -> str:
        stages = (
            f"vertebral bodies and QC in {self.cpu_workers} worker process(es)"
            if self.cpu_workers
            else "every CPU stage in the images' threads"
        )
        return (
            f"CPU budget {self.cpus} ({self.source}): {self.network_workers} network "
            f"worker(s) on {', '.join(devices)} x {self.network_threads} thread(s); up to "
            f"{self.in_flight} image(s) in flight; {stages}"
        )


def plan_budget(
    devices: tuple[str, ...],
    nprocs: int | None,
    omp_nthreads: int | None,
    in_flight: int | None = None,
    pipeline: bool = True,
    cpu_workers: int | None = None,
    env: Mapping[str, str] = os.environ,
    cgroups: Cgroups | None = None,
) -> Budget:
    """Split the CPU budget between network workers and the images' CPU stages.

    A CPU network worker gets the whole budget by default (the CPU stages of the next image
    then share the cores, which on 2 cores is still faster than leaving one idle); a GPU
    worker needs one thread to feed its device. Images in flight: two per network worker,
    so one image's CPU stages run while another's network runs; one when pipelining is off.

    Stage worker processes (`cpu_workers`, None = auto): on GPUs, one per image in flight up
    to the CPUs the network workers leave, since there the CPU stages set the pace and the
    GIL caps threads; on the CPU none (the networks take the cores; a worker would only add
    memory). 0 keeps every stage in the images' threads.
    """
    allowed, source = cpu_allocation(env, cgroups)
    cpus = min(nprocs, allowed) if nprocs else allowed
    if nprocs and nprocs > allowed:
        source = f"--nprocs {nprocs} capped to the {source}"
    elif nprocs:
        source = "--nprocs"
    workers = len(devices)
    on_gpu = all(d.startswith("cuda") for d in devices)
    default_threads = 1 if on_gpu else max(1, cpus // workers)
    threads = min(omp_nthreads or default_threads, cpus)
    flight = max(1, 1 if not pipeline or cpus == 1 else in_flight or 2 * workers)
    if cpu_workers is None:
        cpu_workers = min(flight, cpus - workers) if on_gpu else 0
    return Budget(cpus, source, workers, threads, flight, max(0, min(cpu_workers, cpus)))


def _machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_allocation(
    cpus: int, env: Mapping[str, str] = os.environ, cgroups: Cgroups | None = None
) -> tuple[int, str]:
    """(bytes this run may use, where that number comes from): the smallest of SLURM's
    allocation, the cgroup limit of the job or container, and the machine's memory."""
    candidates = [(_machine_memory(), "machine memory")]
    per_node, per_cpu = env.get("SLURM_MEM_PER_NODE", ""), env.get("SLURM_MEM_PER_CPU", "")
    if per_node.isdigit() and int(per_node) > 0:
        candidates.append((int(per_node) * 2**20, "SLURM_MEM_PER_NODE"))
    elif per_cpu.isdigit() and int(per_cpu) > 0:
        candidates.append((int(per_cpu) * 2**20 * cpus, "SLURM_MEM_PER_CPU x CPUs"))
    limit = (cgroups or Cgroups()).memory_limit()
    if limit:
        candidates.append((limit[0], f"cgroup memory limit ({limit[1]})"))
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
    mem_mb: int | None,
    cpus: int,
    held_bytes: int,
    env: Mapping[str, str] = os.environ,
    cgroups: Cgroups | None = None,
) -> MemoryBudget:
    """Memory for images: --mem-mb (or the allocation) minus `held_bytes` (the process as it
    stands plus the networks it will load), never below a quarter of the total, so a small
    budget still lets small images through one at a time."""
    allowed, source = memory_allocation(cpus, env, cgroups)
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
