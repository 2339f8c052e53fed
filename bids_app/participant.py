"""The participant level: select, then for each image decide, segment, write, QC and stamp.

Flow: validate the input -> select images (printed before any work) -> resolve weights -> for
each image: resume decision, segment, write outputs, QC, stamp. One engine serves every image
of the process. One bad image fails alone: the others go on, the run ends with a status
table and exit code 1 (3 when images are only partial). It reads a `RunConfig`, never the
command line.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
from filelock import FileLock, Timeout

from bids_app import __version__, qc
from bids_app.bids import discovery as disc
from bids_app.bids.derivatives import (
    LOGS_DIR,
    ModelInfo,
    bids_prefix,
    image_output_paths,
    run_log_path,
    write_dataset_files,
    write_image_outputs,
)
from bids_app.bids.stamps import (
    Decision,
    Status,
    options_hash,
    read_stamp,
    resume_decision,
    source_stem,
    stamp_path,
    write_stamp,
)
from bids_app.bids.validation import ValidatorUnavailable, subject_view, validate
from bids_app.config import RunConfig, SelectionConfig
from bids_app.crash import crash_reports, write_crash_file
from bids_app.engine.geometry import iso_grid
from bids_app.engine.memory import estimate_peak_bytes
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import Engine, EngineError, EngineResult
from bids_app.errors import ExitCode, UserError, one_line, without_name
from bids_app.labels import STEP1_REGIONS, STEP2_REGIONS
from bids_app.lesions.participant import lesion_step, resolve_lesion_runner, with_lesion_model
from bids_app.lesions.run import LesionRunner
from bids_app.logs import run_log, say
from bids_app.nnunet.weights import (
    WeightsError,
    describe_release,
    find_checkpoint,
    resolve_weights,
)
from bids_app.progress import RunProgress
from bids_app.qc.records import landmark_list
from bids_app.resources import Budget, MemoryBudget, plan_budget, plan_memory, process_rss
from bids_app.scheduling import DevicePool, ImageScheduler, MemoryGate

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Engine]  # (weights, device specs, threads per network) -> engine


def default_engine_factory(weights, devices: Sequence[str], threads: int | None) -> Engine:
    """The real engine: one network worker per device; imported here so that --help, resume
    and tests need no torch."""
    from bids_app.engine.networks import Networks, PooledNetworks
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.model import resolve_devices

    # Step 1 is loaded at once (every image needs it); step 2 on first use.
    pool = DevicePool(
        resolve_devices(devices), lambda d: Networks(weights, d, threads).warm("step1")
    )
    return SpineSegEngine(weights, threads=threads, predictor=PooledNetworks(pool))


def make_dir(path: Path, what: str) -> None:
    """Create a folder and prove it is writable, or exit 73 naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spineseg-write-test-"):
            pass
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{path}: cannot create the {what} ({e.strerror or e})"
        ) from e


# ---------------------------------------------------------------------------------------------
# Selection


def build_queries(cfg: SelectionConfig) -> tuple[dict[str, dict], dict | None]:
    """Default queries per suffix, updated by the filter file; plus the localizer query."""
    try:
        queries = disc.default_queries(cfg.suffixes or disc.DEFAULT_SUFFIXES)
        loc: dict | None = None
        if cfg.localizer_suffix:
            loc = disc.localizer_base_query(cfg.localizer_suffix)
        if cfg.localizer_query:
            loc = {
                **(loc or {"datatype": "anat"}),
                **disc.read_query_source(cfg.localizer_query, "--localizer"),
            }
        if cfg.filter_file:
            filters = disc.load_filter_file(cfg.filter_file)
            loc_filter = filters.pop(disc.LOCALIZER_KEY, None)
            queries = disc.merge_queries(queries, filters, str(cfg.filter_file))
            if loc_filter is not None:
                if loc is None:
                    raise disc.FilterError(
                        f"{cfg.filter_file}: has a 'localizer' query but neither "
                        "--localizer-suffix nor --localizer was given"
                    )
                loc.update(loc_filter)
    except disc.FilterError as e:
        raise UserError(ExitCode.USAGE, str(e)) from e
    return queries, loc


def validate_input(
    bids_dir: Path, participants: Sequence[str] | None, scratch: Path, logfile: Path
) -> None:
    """bids-validator-deno on the input (only the selected subjects); exit 16 on errors.

    Warnings do not stop the run but are shown by kind (a bare count helps nobody).
    """
    target = (
        subject_view(bids_dir, list(participants), scratch / "bids-view")
        if participants
        else bids_dir
    )
    log.info("validating %s with bids-validator-deno (skip with --skip-bids-validation)", bids_dir)
    try:
        report = validate(target)
    except ValidatorUnavailable as e:
        log.warning("%s; input not validated", e)
        return
    if not report.ok:
        for line in report.error_lines():
            log.error("  %s", line)
        raise UserError(
            ExitCode.VALIDATION,
            f"{bids_dir}: the dataset failed BIDS validation ({len(report.errors)} error(s), "
            "listed above); fix them or pass --skip-bids-validation",
        )
    if not report.warnings:
        log.info("BIDS validation passed with no warning")
        return
    kinds = report.warning_lines()
    log.info(
        "BIDS validation passed with %d warning(s) of %d kinds; by code (also in the log %s):",
        len(report.warnings),
        len(kinds),
        logfile,
    )
    for line in kinds:
        log.info("  %s", line)


def select(config: RunConfig) -> disc.Selection:
    """The images to segment; each discovery problem becomes its documented exit code.

    A frozen selection (SLURM array tasks) is read instead of indexing the dataset, and
    restricted to the task's participant and sessions.
    """
    cfg = config.selection
    try:
        if cfg.frozen is not None:
            frozen = disc.load_selection(cfg.frozen, config.bids_dir)
            return disc.restrict_selection(frozen, cfg.frozen, cfg.all_participants, cfg.sessions)
        queries, loc_query = build_queries(cfg)
        return disc.discover(
            config.bids_dir,
            queries=queries,
            participants=cfg.participants,
            listed_participants=cfg.listed_participants,
            sessions=cfg.sessions,
            localizer_query=loc_query,
        )
    except (disc.FilterError, disc.DerivativeInputError, disc.FrozenSelectionError) as e:
        raise UserError(ExitCode.USAGE, str(e)) from e
    except (disc.UnknownLabelError, disc.EmptySelectionError) as e:
        raise UserError(ExitCode.EMPTY_SELECTION, str(e)) from e
    except disc.MissingImagesError as e:
        raise UserError(ExitCode.NO_INPUT, str(e)) from e
    except disc.DiscoveryError as e:
        raise UserError(ExitCode.VALIDATION, str(e)) from e


def resolve_model(weights_arg: str | None):
    """The verified weights and their provenance; missing or corrupt weights exit 78."""
    try:
        weights = resolve_weights(weights_arg)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    return weights, ModelInfo.from_weights(weights)


# ---------------------------------------------------------------------------------------------
# One image


class ImageFailure(Exception):
    """One image cannot be segmented; the run goes on."""


class ImageCrash(ImageFailure):
    """An unexpected error (a bug or a library failure): its traceback goes to a crash file."""


class ImageOutOfMemory(ImageFailure):
    """Out of memory: depends on the machine and its load, so the next run retries it."""


# nibabel's messages name the full path and end oddly ("got 0 bytes from \n - could the
# file be damaged?" for a .nii.gz); the reason gets the fact, in one line.
_TRUNCATED_RE = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")
_NOT_GZIP_RE = re.compile(r"is not a gzip file")
_UNKNOWN_TYPE_RE = re.compile(r"Cannot work out file type")


def read_problem(error: BaseException) -> str:
    """What is wrong with a file that nibabel cannot read, in one line without its path."""
    text = str(error)
    if m := _TRUNCATED_RE.search(text):
        return f"truncated: {m.group(2)} of {m.group(1)} bytes of voxels"
    if _NOT_GZIP_RE.search(text):
        return "not a gzip file, although its name ends in .gz"
    if _UNKNOWN_TYPE_RE.search(text):
        return "not a NIfTI file (unknown header)"
    return one_line(error)


def create_engine(
    factory: EngineFactory, weights, devices: Sequence[str], threads: int | None
) -> Engine:
    """One engine per process; a device that cannot be used is a one-line error (exit 1)."""
    try:
        engine = factory(weights, devices, threads)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except (ValueError, EngineError) as e:
        raise UserError(
            ExitCode.FAILED,
            f"--device {','.join(devices)}: {one_line(e)} (containers need `--gpus all` "
            "with Docker or `--nv` with Apptainer for CUDA)",
        ) from e
    log.info("engine ready (device %s, threads %s)", engine.device, engine.threads)
    return engine


def load_image(path: Path) -> nib.Nifti1Image:
    """The image, opened read-only by nibabel (never written); unreadable = ImageFailure."""
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise ImageFailure(f"{path.name}: cannot read the image ({read_problem(e)})") from e
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ImageFailure(f"{path.name}: not a NIfTI image ({type(img).__name__})")
    return img


def segment_image(
    engine: Engine,
    img: nib.Nifti1Image,
    options: SegmentOptions,
    *,
    name: str,
    loc: nib.Nifti1Image | None = None,
    progress: Callable[[str], None] | None = None,
) -> EngineResult:
    """Run the engine on one loaded image; every per-image problem becomes an ImageFailure.

    Reasons do not repeat the image's name: the lines that show them name it already.
    """
    try:
        return engine.segment(
            img,
            options,
            loc=loc,
            name=name,
            progress=progress,
        )
    except WeightsError as e:  # models load on first use: bad weights stop the run (78)
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except EngineError as e:
        raise ImageFailure(without_name(one_line(e), name)) from e
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise ImageFailure(f"cannot read the image data ({read_problem(e)})") from e
    except MemoryError as e:
        raise ImageOutOfMemory("out of memory (use fewer threads or a GPU)") from e
    except Exception as e:  # a bug must not cost the other images; the crash file keeps it
        if type(e).__name__ == "OutOfMemoryError":  # torch's, for CUDA (no torch import here)
            raise ImageOutOfMemory(f"out of GPU memory ({one_line(e)})") from e
        raise ImageCrash(f"unexpected {one_line(e, with_type=True)}") from e


# ---------------------------------------------------------------------------------------------
# The participant run


@dataclass
class StatusRow:
    subject: str
    session: str | None
    image: str
    status: Status
    reason: str | None
    seconds: float


def status_table(rows: Sequence[StatusRow]) -> list[str]:
    """The end-of-run table, one row per image (the reason column is left unpadded)."""
    header = ("subject", "session", "image", "status", "seconds", "reason")
    cells = [
        (
            f"sub-{r.subject}",
            f"ses-{r.session}" if r.session else "-",
            r.image,
            str(r.status),
            f"{r.seconds:.1f}",
            r.reason or "",
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(5)]
    lines = []
    for c in [header, *cells]:
        padded = [str(v).ljust(w) for v, w in zip(c[:5], widths, strict=True)]
        lines.append("  ".join([*padded, c[5]]))
    return [ln.rstrip() for ln in lines]


@dataclass
class ImagePlan:
    """What the run decided for one image before touching it."""

    job: disc.ImageJob
    options: SegmentOptions
    decision: Decision
    old_stamp: dict | None
    record: dict  # the stamp fields known before segmenting
    localizer_warning: str | None
    started: float

    def row(self, status: Status, reason: str | None) -> StatusRow:
        if status == Status.SKIPPED:  # a failure that is not retried still counts as one
            status = self.decision.status
        job = self.job
        seconds = time.monotonic() - self.started
        return StatusRow(job.subject, job.session, job.name, status, reason, seconds)


class ParticipantRun:
    """Segments the selected images through one lazily created engine (networks loaded once
    per device), several images in flight when the budget allows."""

    def __init__(
        self,
        config: RunConfig,
        selection: disc.Selection,
        weights,
        model: ModelInfo | None,
        engine_factory: EngineFactory,
        budget: Budget,
        devices: tuple[str, ...],
        memory: MemoryBudget | None = None,
        lesions: LesionRunner | None = None,
    ):
        self.config, self.selection = config, selection
        self.lesions = lesions
        self.out = config.output_dir
        self.weights, self.model = weights, model
        self.engine_factory = engine_factory
        self.budget, self.devices = budget, devices
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._scheduler: ImageScheduler | None = None
        self._progress = RunProgress(0, quiet=True)
        self.memory = MemoryGate(memory.for_images if memory else 2**62)
        self.by_path = {job.path: job for job in selection.jobs}

    def engine(self) -> Engine:
        """Created on first need, so a fully resumed run never loads torch or the models."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = create_engine(
                    self.engine_factory,
                    self.weights,
                    self.devices,
                    self.budget.network_threads,
                )
            return self._engine

    def run(self) -> list[StatusRow]:
        """Every selected image through the pipeline; rows come back in selection order.

        Images run on `budget.in_flight` threads; a guided image waits for its localizer.
        Each subject's report is written once all of its images are done.
        """
        jobs = self.selection.jobs
        rows: dict[int, StatusRow] = {}
        left = {s: sum(j.subject == s for j in jobs) for s in {j.subject for j in jobs}}
        scheduler = ImageScheduler(self.budget.in_flight)
        self._scheduler = scheduler
        index = {id(job): i for i, job in enumerate(jobs)}

        def after(job: disc.ImageJob) -> list[disc.ImageJob]:
            loc = self.by_path.get(job.localizer) if job.localizer else None
            return [loc] if loc is not None else []

        try:
            with RunProgress(len(jobs), quiet=self.config.quiet) as progress:
                self._progress = progress
                for job, fut in scheduler.map_unordered(self.process, jobs, after):
                    row = fut.result()  # per-image errors are rows; others stop the run
                    rows[index[id(job)]] = row
                    progress.finished(job.name, row.status, row.seconds)
                    left[job.subject] -= 1
                    if not left[job.subject]:
                        self.subject_report(job.subject, [r for r in rows.values()])
        except BaseException:  # Ctrl-C, SIGTERM, a disk error: stop taking images
            scheduler.cancel()
            if self._engine is not None:
                self._engine.close(cancel=True)
            raise
        finally:
            scheduler.close()
            if self._engine is not None:
                self._engine.close()
            if rows:
                say("", "Status:", *status_table([rows[i] for i in sorted(rows)]))
        return [rows[i] for i in sorted(rows)]

    def stage(self, job: disc.ImageJob, stage: str) -> None:
        """An image enters a stage: stop here if the run is cancelled, show it otherwise."""
        if self._scheduler is not None:
            self._scheduler.check()
        self._progress.stage(job.name, stage)
        log.debug("%s: %s", job.name, stage)

    def localizer_labels(self, job: disc.ImageJob) -> tuple[str | None, str | None]:
        """(output-relative path of the localizer's labels, warning) for a guided image."""
        if job.localizer is None:
            return None, None
        loc_job = self.by_path[job.localizer]
        stamp = read_stamp(stamp_path(self.out, loc_job.name)) or {}
        outputs = image_output_paths(loc_job.relpath, loc_job.suffix, iso=False)
        listed = set(stamp.get("outputs") or [])
        for key in ("final", "step1"):
            rel = outputs[(key, False)]
            if (
                stamp.get("status") in (Status.OK, Status.PARTIAL)
                and rel in listed
                and (self.out / rel).is_file()
            ):
                return rel, None
        why = stamp.get("reason") or stamp.get("status") or "not segmented"
        return None, f"localizer {loc_job.name} has no labels ({why}); segmented without it"

    def process(self, job: disc.ImageJob) -> StatusRow:
        """One image under its lock: another run on the same output folder (a second
        terminal, a resubmitted task) skips it instead of computing it twice."""
        lock_file = stamp_path(self.out, job.name).with_name(f".{job.name}.lock")
        with _writing(job.name):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file), blocking=False)
        try:
            lock.acquire()
        except Timeout:
            reason = f"being segmented by another run (lock {lock_file.name}); rerun after it"
            log.warning("%s: skipped, %s", job.name, reason)
            return StatusRow(job.subject, job.session, job.name, Status.SKIPPED, reason, 0.0)
        try:
            return self._process(job)
        finally:
            lock.release()

    def _process(self, job: disc.ImageJob) -> StatusRow:
        """Decide, then segment, write, QC and stamp one image."""
        self.stage(job, "resume check")
        plan = self.decide(job)
        if not plan.decision.run:
            log.info("%s: skipped, %s", job.name, plan.decision.reason)
            return plan.row(Status.SKIPPED, plan.decision.reason)
        (log.warning if plan.decision.warn else log.info)(
            "%s: %s; segmenting", job.name, plan.decision.reason
        )
        with _writing(job.name):
            # No "ok" stamp may outlive the outputs it vouches for.
            stamp_path(self.out, job.name).unlink(missing_ok=True)
        try:
            img, result = self.segment(plan)
        except ImageFailure as e:
            return self.fail(plan, str(e), e)
        if plan.localizer_warning:
            result.warnings.append(plan.localizer_warning)
        for warning in result.warnings:  # also in the stamp, the sidecars and the report
            log.warning("%s: %s", job.name, warning)
        self.stage(job, "write")
        outputs = self.write(plan, result)
        status, reason = self.outcome(plan, result)
        if self.lesions is not None and self.lesions.applies(job.suffix):
            self.stage(job, "lesions")
            with _writing(job.name):
                lesion_outputs, lesion_error = lesion_step(
                    self.lesions, self._engine, self.out, job, img, result, outputs
                )
            outputs += lesion_outputs
            if lesion_error:
                status, reason = Status.PARTIAL, "; ".join(filter(None, [reason, lesion_error]))
        self.stage(job, "QC")
        qc_outputs, qc_error = self.image_qc(plan, img, result)
        if qc_error:
            status = Status.PARTIAL
            reason = "; ".join(filter(None, [reason, f"QC: {qc_error}"]))
        outputs += [o for o in qc_outputs if o not in outputs]
        self.stamp(plan, result, status, reason, outputs)
        (log.warning if status != Status.OK else log.info)(
            "%s: %s%s", job.name, status, f" ({reason})" if reason else ""
        )
        return plan.row(status, reason)

    def decide(self, job: disc.ImageJob) -> ImagePlan:
        """The image's options (with its localizer) and whether its stamp lets us skip it.

        Without a model (a dry run), the decision does not compare model hashes.
        """
        started = time.monotonic()
        loc_rel, loc_warning = self.localizer_labels(job)
        options = replace(self.config.options, localizer=loc_rel)
        opts_hash = options_hash(options.record())
        old = read_stamp(stamp_path(self.out, job.name))
        model = self.model.stamp() if self.model else None
        model = with_lesion_model(model, self.lesions, job.suffix)
        decision = resume_decision(
            old,
            output_dir=self.out,
            app_version=__version__,
            opts_hash=opts_hash,
            model=model,
            overwrite=self.config.overwrite,
            retry_failed=self.config.retry_failed,
        )
        record = {
            "source": job.relpath,
            "subject": job.subject,
            "session": job.session,
            "app_version": __version__,
            "options_hash": opts_hash,
            "options": options.record(),
            "model": model,
        }
        return ImagePlan(job, options, decision, old, record, loc_warning, started)

    def segment(self, plan: ImagePlan) -> tuple[nib.Nifti1Image, EngineResult]:
        """Load the source (and localizer labels) once, wait until its arrays fit in the
        memory budget, then run the engine: an unreadable or oversized file fails before any
        model is loaded or any array allocated."""
        job = plan.job
        self.stage(job, "read")
        img = load_image(job.path)
        loc = load_image(self.out / plan.options.localizer) if plan.options.localizer else None
        need = self.image_memory(img, plan.options)
        if not self.memory.fits(need):
            raise ImageOutOfMemory(
                f"needs about {need / 2**30:.1f} GiB for its arrays on the 1 mm grid, more "
                f"than the {self.memory.capacity / 2**30:.1f} GiB the memory budget leaves "
                "for images (raise --mem-mb or run it on a node with more memory)"
            )
        self.stage(job, "waiting for memory")
        with self.memory.reserve(need, check=lambda: self.stage(job, "waiting for memory")):
            return img, segment_image(
                self.engine(),
                img,
                plan.options,
                name=job.name,
                loc=loc,
                progress=lambda stage: self.stage(job, stage),
            )

    @staticmethod
    def image_memory(img: nib.Nifti1Image, options: SegmentOptions) -> int:
        """Estimated peak bytes of the image's arrays, from its header alone."""
        shape, _ = iso_grid(img)
        return estimate_peak_bytes(
            shape,
            len(STEP1_REGIONS),
            len(STEP2_REGIONS),
            input_itemsize=img.get_data_dtype().itemsize,
            step1_only=options.step1_only,
        )

    def fail(self, plan: ImagePlan, reason: str, error: BaseException | None = None) -> StatusRow:
        """Stamp a failed image with its one-line reason.

        `error` (default: the exception being handled) decides the rest: an unexpected one
        gets a crash file, named by the reason; out of memory is stamped `transient`, so the
        next run retries it.
        """
        job = plan.job
        error = error or sys.exception()
        reason = without_name(reason, job.name)
        plan.record["transient"] = isinstance(error, ImageOutOfMemory)  # stamp fields
        if isinstance(error, ImageCrash):
            with _writing(job.name):
                crash = write_crash_file(
                    self.out / LOGS_DIR,
                    source_stem(job.name),
                    error.__cause__ or error,
                    {"image": job.relpath, "options": plan.record["options"]},
                )
            plan.record["crash_file"] = crash.relative_to(self.out).as_posix()
            reason = f"{reason} (see {plan.record['crash_file']})"
        log.error("%s: failed: %s", job.name, reason)
        self._write_stamp(
            plan, Status.FAILED, reason, device=None, timings={}, landmarks={}, warnings=[]
        )
        return plan.row(Status.FAILED, reason)

    def write(self, plan: ImagePlan, result: EngineResult) -> list[str]:
        """The image outputs and their sidecars; returns their output-relative paths."""
        assert self.model is not None, "a dry run (no model) never writes"
        job = plan.job
        with _writing(job.name):
            return write_image_outputs(
                self.out,
                job.relpath,
                job.suffix,
                result,
                self.model,
                localizer_output=plan.options.localizer,
            )

    def outcome(self, plan: ImagePlan, result: EngineResult) -> tuple[Status, str | None]:
        """ok, or partial with the reason (step 2 failed, or no final labels)."""
        if result.errors:
            return Status.PARTIAL, "; ".join(result.errors)
        if "final" not in result.native and not plan.options.step1_only:
            return Status.PARTIAL, "no final labels returned"
        return Status.OK, None

    def image_qc(
        self, plan: ImagePlan, img: nib.Nifti1Image, result: EngineResult
    ) -> tuple[list[str], str | None]:
        """QC files of one image (written, relative to output_dir) and the QC error, if any.

        QC must never cost a segmentation: a failure is reported (the image becomes
        "partial") but the outputs stay.
        """
        job = plan.job
        try:
            summary = qc.write_image_qc(
                img,
                result.native.get("final"),
                result.native.get("levels"),
                output_dir=self.out,
                subject=job.subject,
                stem=bids_prefix(job.name, job.suffix),
                suffix=job.suffix,
                landmarks=landmark_list(result.landmarks),
            )
        except Exception as e:  # QC is secondary: keep the segmentation, report the problem
            log.exception("%s: QC failed", job.name)
            return [], one_line(e, with_type=True)
        return [Path(p).as_posix() for p in summary.get("outputs", [])], None

    def stamp(
        self,
        plan: ImagePlan,
        result: EngineResult,
        status: Status,
        reason: str | None,
        outputs: list[str],
    ) -> None:
        """Remove what the previous run wrote and this one did not, then stamp (last)."""
        with _writing(plan.job.name):
            _remove_stale(self.out, plan.old_stamp, outputs)
        self._write_stamp(
            plan,
            status,
            reason,
            device=result.device,
            timings=result.timings,
            landmarks=result.landmarks,
            warnings=[*result.warnings, *result.errors],
            outputs=outputs,
        )

    def _write_stamp(
        self,
        plan: ImagePlan,
        status: Status,
        reason: str | None,
        *,
        device: str | None,
        timings: dict[str, float],
        landmarks: dict,
        warnings: list[str],
        outputs: Sequence[str] = (),
    ) -> None:
        total = round(time.monotonic() - plan.started, 3)
        with _writing(plan.job.name):
            write_stamp(
                stamp_path(self.out, plan.job.name),
                {
                    **plan.record,
                    "status": status,
                    "reason": reason,
                    "device": device,
                    "timings": {**timings, "total": total},
                    "landmarks": landmarks,
                    "warnings": warnings,
                    "outputs": list(outputs),
                },
            )

    def subject_report(self, subject: str, rows: Sequence[StatusRow]) -> None:
        """`sub-<label>.html` after the subject's last image (when anything changed)."""
        mine = [r for r in rows if r.subject == subject]
        fresh = any(r.status != Status.SKIPPED for r in mine)
        if fresh or not (self.out / f"sub-{subject}.html").is_file():
            try:
                qc.write_subject_report(self.out, subject)
            except Exception:
                log.exception("sub-%s: subject report failed", subject)


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """Turn an OSError while writing outputs into exit 74 (the disk, not the image, failed)."""
    try:
        yield
    except OSError as e:
        raise UserError(
            ExitCode.IO_ERROR, f"{e.filename or what}: cannot write outputs ({e.strerror or e})"
        ) from e


def _remove_stale(output_dir: Path, old: dict | None, outputs: Sequence[str]) -> None:
    """Delete outputs of the previous run of this image that this run did not rewrite."""
    keep = set(outputs)
    root = output_dir.resolve()
    for rel in (old or {}).get("outputs") or []:
        path = (output_dir / rel).resolve()
        if rel not in keep and root in path.parents:
            path.unlink(missing_ok=True)


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


def check_devices(specs: Sequence[str]) -> tuple[str, ...]:
    """The devices the run will use, checked before any work (64 when one is unusable).

    Only CUDA needs torch to be asked; a CPU-only run never imports it here.
    """
    if all(spec == "cpu" for spec in specs):
        return tuple(specs)
    from bids_app.nnunet.model import resolve_devices

    try:
        return tuple(resolve_devices(specs))
    except ValueError as e:
        raise UserError(
            ExitCode.USAGE,
            f"--device {','.join(specs)}: {one_line(e)} (containers need `--gpus all` "
            "with Docker or `--nv` with Apptainer for CUDA)",
        ) from e


def run_participant(config: RunConfig, engine_factory: EngineFactory) -> int:
    """The whole participant level; returns the exit code (see `exit_code`)."""
    out = config.output_dir
    res = config.resources
    devices = check_devices(res.devices)
    budget = plan_budget(devices, res.nprocs, res.omp_nthreads, res.in_flight, res.pipeline)
    if config.dry_run:
        return dry_run(config, budget, devices)
    make_dir(out, "output folder")
    with ExitStack() as stack:
        logfile = stack.enter_context(run_log(run_log_path(out)))
        stack.enter_context(crash_reports(out, "participant"))
        say(f"spineseg {__version__}: participant level", f"log: {logfile}")
        if config.work_dir is not None:
            make_dir(config.work_dir, "work folder")
            scratch = config.work_dir
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spineseg-")))
        # Select first: a wrong label or a derivative dataset is named as such, and the
        # validator then sees only the subjects that will be segmented.
        selection = select(config)
        if not config.selection.skip_validation:
            subset = selection.subjects if config.selection.all_participants else None
            validate_input(config.bids_dir, subset, scratch, logfile)
        say(*selection.describe())
        if config.reports_only:
            written = qc.rebuild_reports(
                out, config.bids_dir, config.selection.all_participants, config.selection.sessions
            )
            say(*(f"wrote {w}" for w in written))
            return ExitCode.OK
        weights, model = resolve_model(config.weights)
        say(f"model: {describe_release(model.release)} ({weights.release_dir})")
        with _writing(str(out)):
            changed = write_dataset_files(out, config.bids_dir, model)
        if changed:
            log.info("wrote %s", ", ".join(changed))
        memory = plan_memory(
            res.mem_mb, budget.cpus, process_rss() + networks_bytes(weights, len(devices))
        )
        log.info("%s; %s", budget.describe(devices), memory.describe())
        lesions = resolve_lesion_runner(
            config.lesion_model, config.lesion_suffixes, budget.network_threads
        )
        run = ParticipantRun(
            config, selection, weights, model, engine_factory, budget, devices, memory, lesions
        )
        rows = run.run()
    return exit_code(rows)


def exit_code(rows: Sequence[StatusRow]) -> ExitCode:
    """1 when an image failed (now, or unchanged since an earlier run), else 3 when one is
    partial, else 0: a script can tell "rerun with a fix" from "review the partial ones"."""
    statuses = {row.status for row in rows}
    if Status.FAILED in statuses:
        return ExitCode.FAILED
    return ExitCode.PARTIAL if Status.PARTIAL in statuses else ExitCode.OK


def dry_run(config: RunConfig, budget: Budget, devices: tuple[str, ...]) -> int:
    """`--dry-run`: the selection and what a run would do with each image, and why.

    It reads the stamps only: no output folder, log, weights or network, so it takes
    seconds. Without the weights their hashes are unknown, so a skip says that a changed
    model would still recompute the image (hashing the checkpoints would cost more than
    the rest of the dry run). The input is not validated either.
    """
    selection = select(config)
    say(*selection.describe())
    say(
        "",
        "Dry run: nothing is written and the input is not validated; the weights are not "
        "read, so an image shown as skipped is still recomputed if the model changed:",
    )
    # decide() loads nothing, so the engine factory is never called.
    say(f"It would run with a {budget.describe(devices)}.")
    planner = ParticipantRun(config, selection, None, None, default_engine_factory, budget, devices)
    for job in selection.jobs:
        decision = planner.decide(job).decision
        where = f"sub-{job.subject}" + (f" ses-{job.session}" if job.session else "")
        action = "segment" if decision.run else "skip"
        say(f"  {where}: {job.name}: would {action}: {decision.reason}")
    return ExitCode.OK
