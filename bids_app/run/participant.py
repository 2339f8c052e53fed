"""The participant level: select, then for each image decide, segment, write, QC and stamp.

Selection lives in `bids_app.run.selection`, one image's segmentation in
`bids_app.run.segmentation`; this module schedules the images and records what became of each.

Flow: validate the input -> select images (printed before any work) -> resolve weights -> for
each image: resume decision, segment, write outputs, QC, stamp. One engine serves every image
of the process. One bad image fails alone: the others go on, the run ends with a status
table and exit code 1 (3 when images are only partial). It reads a `RunConfig`, never the
command line.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
from filelock import FileLock, Timeout

from bids_app import __version__, qc
from bids_app.bids import discovery as disc
from bids_app.bids.derivatives import (
    LOGS_DIR,
    ModelInfo,
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
from bids_app.corrections import files as corr
from bids_app.engine.geometry import iso_grid
from bids_app.engine.memory import estimate_peak_bytes
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import Engine, EngineError, EngineResult
from bids_app.lesions.participant import lesion_step, resolve_lesion_runner, with_lesion_model
from bids_app.lesions.run import LesionRunner
from bids_app.nnunet.weights import (
    WeightsError,
    describe_release,
    find_checkpoint,
)
from bids_app.plumbing.atomic import make_dir
from bids_app.plumbing.crash import crash_reports, write_crash_file
from bids_app.plumbing.errors import ExitCode, UserError, one_line, without_name
from bids_app.plumbing.labels import STEP1_REGIONS, STEP2_REGIONS
from bids_app.plumbing.logs import run_log, say
from bids_app.qc.records import QCPaths, landmark_list, read_json
from bids_app.run.config import RunConfig
from bids_app.run.progress import RunProgress
from bids_app.run.resources import Budget, MemoryBudget, plan_budget, plan_memory, process_rss
from bids_app.run.scheduling import ImageScheduler, MemoryGate
from bids_app.run.segmentation import (
    EngineFactory,
    ImageCrash,
    ImageFailure,
    ImageOutOfMemory,
    create_engine,
    default_engine_factory,
    load_image,
    resolve_model,
    segment_image,
)
from bids_app.run.selection import select, validate_input

log = logging.getLogger(__name__)

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


KEPT_DIR = LOGS_DIR / "cache"  # raw network outputs per image, for corrections


@dataclass
class Corrected:
    """An image with its checked corrections: corrected labels, or disc points as a
    localizer image."""

    image: nib.Nifti1Image
    labels: np.ndarray | None  # final labels on the image's grid
    localizer: nib.Nifti1Image | None


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
        self.corrections = self.find_corrections()

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
        lock_file = self.out / LOGS_DIR / "locks" / f".{job.name}.lock"
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
        try:  # before anything is touched: a bad correction leaves the image as it was
            fixes = self.read_corrections(plan)
        except corr.CorrectionError as e:
            log.error("%s: %s; its outputs are left as they were", job.name, e)
            return plan.row(Status.FAILED, f"{e}; outputs left as they were")
        except ImageFailure as e:
            return self.fail(plan, str(e), e)
        with _writing(job.name):
            # No "ok" stamp may outlive the outputs it vouches for.
            stamp_path(self.out, job.name).unlink(missing_ok=True)
        try:
            img, result = self.segment(plan) if fixes is None else self.correct(plan, fixes)
        except ImageFailure as e:
            return self.fail(plan, str(e), e)
        self.keep(plan, result)
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
                    self.lesions, self._engine, self.out, job, img, result, outputs, self.memory
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
        found = self.corrections_of(job)
        options = replace(
            self.config.options, localizer=loc_rel, corrections=corr.options_value(found)
        )
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
        record: dict[str, object] = {
            "source": job.relpath,
            "subject": job.subject,
            "session": job.session,
            "app_version": __version__,
            "options_hash": opts_hash,
            "options": options.record(),
            "model": model,
        }
        if found:
            root = self.config.corrections_dir
            assert root is not None
            record["corrections"] = [c.record(root) for c in found.values()]
        return ImagePlan(job, options, decision, old, record, loc_warning, started)

    def segment(
        self, plan: ImagePlan, loc: nib.Nifti1Image | None = None
    ) -> tuple[nib.Nifti1Image, EngineResult]:
        """Load the source (and localizer labels, unless `loc` is given) once, wait until its
        arrays fit in the memory budget, then run the engine: an unreadable or oversized file
        fails before any model is loaded or any array allocated."""
        job = plan.job
        self.stage(job, "read")
        img = load_image(job.path)
        if loc is None and plan.options.localizer:
            loc = load_image(self.out / plan.options.localizer)
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

    # -- corrections (see bids_app/corrections/files.py and the README's correction loop) ---------

    def find_corrections(self) -> corr.Matched:
        """The selected images' corrections; a file that matches no image is one error line."""
        root = self.config.corrections_dir
        if root is None:
            return corr.Matched({}, [])
        sources = [job.relpath for job in self.selection.jobs]
        matched = corr.match(corr.find_corrections(root), root, self.config.bids_dir, sources)
        for line in matched.problems:
            log.error("%s", line)
        if matched.by_source:
            log.info("%d image(s) with corrections from %s", len(matched.by_source), root)
        return matched

    def corrections_of(self, job: disc.ImageJob) -> dict[str, corr.Correction]:
        """The image's corrections in use: a corrected segmentation makes disc points moot."""
        found = self.corrections.by_source.get(
            str(PurePosixPath(job.relpath).parent / source_stem(job.name)), {}
        )
        return {corr.SEG_KIND: found[corr.SEG_KIND]} if corr.SEG_KIND in found else dict(found)

    def manual_sources(self, job: disc.ImageJob) -> dict[str, str]:
        """Correction kind -> BIDS URI of its file, for the sidecars."""
        root = self.config.corrections_dir
        return {
            kind: corr.source_uri(c.path, root, self.config.bids_dir)
            for kind, c in self.corrections_of(job).items()
            if root is not None
        }

    def read_corrections(self, plan: ImagePlan) -> Corrected | None:
        """The image and its checked corrections (None without any); CorrectionError names
        the file and its problem."""
        found = self.corrections_of(plan.job)
        if not found:
            return None
        img = load_image(plan.job.path)
        if corr.SEG_KIND in found:
            return Corrected(img, corr.corrected_labels(found[corr.SEG_KIND], img), None)
        points = corr.disc_points(found[corr.DISCS_KIND], img)
        return Corrected(img, None, corr.points_localizer(points))

    def correct(self, plan: ImagePlan, fixes: Corrected) -> tuple[nib.Nifti1Image, EngineResult]:
        """Redo an image from its corrections: a corrected segmentation as it is, disc points
        by relabeling the kept network outputs. The networks run only when nothing usable
        was kept; the automatic result's flags go to the stamp for provenance."""
        from bids_app.engine import replay  # numpy/scipy only, but not needed before

        job = plan.job
        self.stage(job, "corrections")
        plan.record["manual"] = corr.KIND_NAMES[
            corr.SEG_KIND if fixes.labels is not None else corr.DISCS_KIND
        ]
        plan.record["automatic_flags"] = self.automatic_flags(plan)
        kept = replay.load_kept(self.kept_path(job), self.kept_meta(job))
        device = str((plan.old_stamp or {}).get("device") or "cpu")
        try:
            if fixes.labels is not None:
                result = replay.from_manual(
                    fixes.image, fixes.labels, plan.options, kept=kept, name=job.name
                )
                return fixes.image, result
            if kept is not None:
                try:
                    result = replay.relabel(
                        fixes.image,
                        kept,
                        plan.options,
                        device=device,
                        loc=fixes.localizer,
                        name=job.name,
                        progress=lambda stage: self.stage(job, stage),
                    )
                    return fixes.image, result
                except replay.KeptMismatch as e:
                    log.info("%s: %s; running the networks", job.name, e)
        except EngineError as e:
            raise ImageFailure(without_name(one_line(e), job.name)) from e
        log.info("%s: no kept network outputs; running the networks", job.name)
        return self.segment(plan, loc=fixes.localizer)

    def automatic_flags(self, plan: ImagePlan) -> list | None:
        """The QC flags of the image's last automatic result (kept across corrections)."""
        old = plan.old_stamp or {}
        if old.get("corrections"):
            return old.get("automatic_flags")
        job = plan.job
        paths = QCPaths.of(self.out, job.relpath, job.suffix)
        return read_json(paths.qc).get("flags") if paths.qc.is_file() else None

    def kept_path(self, job: disc.ImageJob) -> Path:
        return self.out / KEPT_DIR / f"{source_stem(job.name)}.npz"

    def kept_meta(self, job: disc.ImageJob) -> dict[str, object]:
        """What kept network outputs were made from: a change makes them unusable."""
        digest = hashlib.sha256(job.path.read_bytes()).hexdigest()
        model = self.model.stamp() if self.model else None
        return {"source_sha256": digest, "app_version": __version__, "model": model}

    def keep(self, plan: ImagePlan, result: EngineResult) -> None:
        """Keep what the networks gave (a few MB per image, compressed), for corrections."""
        if not result.kept:
            return
        from bids_app.engine import replay

        try:
            size = replay.save_kept(self.kept_path(plan.job), result.kept, self.kept_meta(plan.job))
        except OSError as e:  # only a later correction loses: it will run the networks
            log.warning("%s: network outputs not kept (%s)", plan.job.name, e.strerror or e)
            return
        log.debug("%s: kept network outputs, %.1f MB", plan.job.name, size / 1e6)

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
                manual=self.manual_sources(plan.job),
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
                source=job.relpath,
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
