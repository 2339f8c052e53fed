"""The run configuration: built once from the command line, frozen and typed.

`cli/` turns argv into a `RunConfig`; everything below reads this object and never the
argparse namespace, so the participant run, the SLURM writer and tests share one description
of a run (MRIQC's `config.py` idea, without global state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bids_app.engine.options import SegmentOptions

DEFAULT_LESION_SUFFIXES = ("T2w",)  # SCIseg's lesions are T2w-hyperintense


@dataclass(frozen=True)
class SelectionConfig:
    """Which images: labels (without `sub-`/`ses-`; None = all) and the pybids queries."""

    participants: tuple[str, ...] | None = None  # asked for one by one: each must have images
    listed_participants: tuple[str, ...] | None = None  # from a file: those without are skipped
    sessions: tuple[str, ...] | None = None
    suffixes: tuple[str, ...] | None = None
    filter_file: Path | None = None
    localizer_suffix: str | None = None
    localizer_query: str | None = None  # inline JSON or a JSON file
    skip_validation: bool = False
    frozen: Path | None = None  # a selection file written with the SLURM script: no pybids

    @property
    def participant_labels(self) -> tuple[str, ...] | None:
        """The participant labels given, inline or in a file; None when none were (all)."""
        labels = (*(self.participants or ()), *(self.listed_participants or ()))
        return tuple(dict.fromkeys(labels)) or None


@dataclass(frozen=True)
class Resources:
    """Where and with how much: device specs, the CPU budget (None = what we may use) and
    the pipeline (see `bids_app.resources.plan_budget` for how they combine)."""

    devices: tuple[str, ...] = ("auto",)
    nprocs: int | None = None
    omp_nthreads: int | None = None
    pipeline: bool = True
    in_flight: int | None = None
    cpu_workers: int | None = None  # stage worker processes; None: auto (GPU yes, CPU no)
    mem_mb: int | None = None  # None: the cgroup/SLURM limit or the machine's memory


@dataclass(frozen=True)
class SlurmConfig:
    """`--slurm-script`: what the array and group scripts ask SLURM for, and how a task runs.

    `task_argv` is the command line as typed without the SLURM options (cli/ removes them
    with the real parser); each task runs it plus its own participant and the frozen selection.
    """

    script: Path
    task_argv: tuple[str, ...]
    mem: str
    time: str
    per_session: bool = False
    throttle: int | None = None
    gpus: int | None = None
    partition: str | None = None
    account: str | None = None
    container: Path | None = None
    max_array: int = 1001  # SLURM's MaxArraySize: larger selections are split into arrays
    group_partition: str | None = None  # None: the cluster's default partition
    group_mem: str = "4G"
    group_time: str = "00:30:00"


@dataclass(frozen=True)
class RunConfig:
    """One BIDS-App run: paths, selection, what to compute and with what."""

    bids_dir: Path
    output_dir: Path
    level: str
    work_dir: Path | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    options: SegmentOptions = field(default_factory=SegmentOptions)
    resources: Resources = field(default_factory=Resources)
    weights: str | None = None
    overwrite: bool = False
    retry_failed: bool = False  # recompute images stamped failed/partial by an identical run
    reports_only: bool = False
    quiet: bool = False  # no progress bar
    dry_run: bool = False  # print what would be done; write nothing
    ratings_dir: Path | None = None  # group level: manual ratings (default output_dir/ratings)
    corrections_dir: Path | None = None  # participant level: manual corrections (None: none)
    lesion_model: str | None = None  # nnU-Net lesion model folder (SCIseg-like), "demo", or none
    lesion_suffixes: tuple[str, ...] = DEFAULT_LESION_SUFFIXES  # images the lesion model runs on
    slurm: SlurmConfig | None = None  # write SLURM scripts instead of running
