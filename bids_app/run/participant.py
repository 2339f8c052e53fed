"""The participant level: select, then take each image through its stages and record what
became of it.

Selection lives in `bids_app.run.selection`; the stages of one image in `bids_app.run.stages`:

    decide -> (corrections) -> segment -> write -> (lesions) -> vertebral bodies -> QC -> stamp

Each stage is told what it needs and hands back what it did; `stages.outcome.status_of`
decides the image's status and reason from that, in one place. One engine serves every image
of the process. One bad image fails alone: the others go on, the run ends with a status
table and exit code 1 (3 when images are only partial). It reads a `RunConfig`, never the
command line. `--dry-run` is `bids_app.run.dry_run`; the checks before the first image are
`bids_app.run.preflight`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial

from filelock import FileLock, Timeout

from bids_app import __version__, qc
from bids_app.bids import discovery as disc
from bids_app.bids.derivatives import LOGS_DIR, ModelInfo, run_log_path, write_dataset_files
from bids_app.bids.sources import source_record
from bids_app.bids.stamps import Status, stamp_path
from bids_app.corrections.catalog import CorrectionCatalog
from bids_app.corrections.checking import CorrectionError
from bids_app.corrections.kept import KeptOutputs
from bids_app.engine.result import Engine
from bids_app.lesions.participant import resolve_lesion_runner, with_lesion_model
from bids_app.lesions.run import LesionRunner
from bids_app.nnunet.weights import describe_release
from bids_app.plumbing.atomic import make_dir
from bids_app.plumbing.crash import crash_reports
from bids_app.plumbing.errors import ExitCode, UserError, one_line
from bids_app.plumbing.logs import run_log, say
from bids_app.plumbing.scratch import temporary_files_in
from bids_app.run.config import RunConfig
from bids_app.run.dry_run import dry_run
from bids_app.run.preflight import check_devices, networks_bytes
from bids_app.run.progress import RunProgress
from bids_app.run.resources import (
    WORKER_BYTES,
    Budget,
    MemoryBudget,
    plan_budget,
    plan_memory,
    process_rss,
)
from bids_app.run.scheduling import ImageScheduler, MemoryGate, StageWorkers
from bids_app.run.segmentation import (
    EngineFactory,
    ImageCrash,
    ImageFailure,
    create_engine,
    resolve_model,
)
from bids_app.run.selection import select, validate_input
from bids_app.run.stages.base import AfterSegmentation, Segmented, run_stage, writing
from bids_app.run.stages.correct import CorrectionStage
from bids_app.run.stages.decide import ImagePlan, decide, unplanned
from bids_app.run.stages.image_qc import QCStage
from bids_app.run.stages.lesions import LesionStage
from bids_app.run.stages.outcome import (
    Ending,
    Failed,
    Finished,
    Refused,
    Skipped,
    StatusRow,
    status_of,
    status_table,
)
from bids_app.run.stages.segment import SegmentStage, segmentation_problems
from bids_app.run.stages.stamp import failure_reason, stamp
from bids_app.run.stages.vertebrae import VertebraStage
from bids_app.run.stages.write import WriteStage

log = logging.getLogger(__name__)


class ParticipantRun:
    """Takes the selected images through their stages with one lazily created engine
    (networks loaded once per device), several images in flight when the budget allows."""

    def __init__(
        self,
        config: RunConfig,
        selection: disc.Selection,
        weights,
        model: ModelInfo,
        engine_factory: EngineFactory,
        budget: Budget,
        devices: tuple[str, ...],
        memory: MemoryBudget | None = None,
        lesions: LesionRunner | None = None,
    ):
        self.config, self.selection = config, selection
        self.out = out = config.output_dir
        self.weights, self.model, self.lesions = weights, model, lesions
        self.engine_factory = engine_factory
        self.budget, self.devices = budget, devices
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._scheduler: ImageScheduler | None = None
        self._progress = RunProgress(0, quiet=True)
        self.memory = MemoryGate(memory.for_images if memory else 2**62)
        self.workers = StageWorkers(budget.cpu_workers)  # the stages that may leave the GIL
        self.by_path = {job.path: job for job in selection.jobs}
        self.entered: dict[str, str] = {}  # image name -> the stage it is in (for crashes)
        self.locked: list[str] = []  # images another run holds: this run did not do them
        self.corrections = CorrectionCatalog(
            config.corrections_dir, config.bids_dir, selection.jobs
        )
        self.kept = KeptOutputs(out, model.stamp())
        self.segment = SegmentStage(out, self.engine, self.memory)
        self.correct = CorrectionStage(out, self.corrections, self.kept, self.segment)
        # After segmentation, in this order; a new stage (e.g. vertebral bodies) joins here.
        self.after: list[AfterSegmentation] = [WriteStage(out, model, self.corrections.sources)]
        if lesions is not None:
            self.after.append(LesionStage(lesions, out, self.memory, lambda: self._engine))
        self.after.append(VertebraStage(out))
        self.after.append(QCStage(out))

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
        """Every selected image through its stages; rows come back in selection order.

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
            self.workers.close(cancel=True)
            if self._engine is not None:
                self._engine.close(cancel=True)
            raise
        finally:
            scheduler.close()
            self.workers.close()
            if self._engine is not None:
                self._engine.close()
            if rows:
                say("", "Status:", *status_table([rows[i] for i in sorted(rows)]))
        return [rows[i] for i in sorted(rows)]

    def enter(self, job: disc.ImageJob, stage: str) -> None:
        """An image enters a stage: stop here if the run is cancelled, show it otherwise."""
        if self._scheduler is not None:
            self._scheduler.check()
        self.entered[job.name] = stage
        self._progress.stage(job.name, stage)
        log.debug("%s: %s", job.name, stage)

    def process(self, job: disc.ImageJob) -> StatusRow:
        """One image under its lock: another run on the same output folder (a second
        terminal, a resubmitted task) skips it instead of computing it twice."""
        lock_file = self.out / LOGS_DIR / "locks" / f".{job.name}.lock"
        with writing(job.name):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file), blocking=False)
        try:
            lock.acquire()
        except Timeout:
            busy = f"being segmented by another run (lock {lock_file.name}); rerun after it"
            log.warning("%s: skipped, %s", job.name, busy)
            self.locked.append(job.name)
            return StatusRow.of(job, *status_of(Skipped(busy)), started=None)
        plan: ImagePlan | None = None
        try:
            self.enter(job, "resume check")
            plan = self.decide(job)
            ending = self.stages(plan)
            status, reason = status_of(ending)
            self.entered[job.name] = "stamp"
            self.record(plan, ending, status, reason)
            return StatusRow.of(job, status, reason, plan.started)
        except UserError:  # the disk, the weights: every image would meet it
            raise
        except Exception as e:  # a bug in any stage costs this image only
            return self.crashed(job, plan, e)
        finally:
            lock.release()

    def crashed(self, job: disc.ImageJob, plan: ImagePlan | None, error: Exception) -> StatusRow:
        """An unexpected error in any stage of one image, from `decide` (a stamp or a
        correction that breaks it) to the stamp: that image fails with one line naming the
        stage, the traceback goes to a crash file, and the run goes on.

        Before `decide` made a plan, the failure is stamped without options: the next run
        then tries the image again.
        """
        stage = self.entered.get(job.name, "start")
        plan = plan or unplanned(job, self.config.options)
        crash = ImageCrash(f"unexpected {one_line(error, with_type=True)} (stage: {stage})")
        crash.__cause__ = error
        ending = Failed(failure_reason(self.out, plan, crash))
        status, reason = status_of(ending)
        try:
            self.record(plan, ending, status, reason)
        except UserError:
            raise
        except Exception:  # the stamp itself is what breaks: the crash file says why
            log.error("%s: failed: %s; no status stamp written", job.name, reason)
        return StatusRow.of(job, status, reason, plan.started)

    def decide(self, job: disc.ImageJob) -> ImagePlan:
        """The image's options (with its localizer) and whether its stamp lets us skip it."""
        model = with_lesion_model(self.model.stamp(), self.lesions, job.suffix)
        return decide(
            job,
            output_dir=self.out,
            options=self.config.options,
            jobs=self.by_path,
            corrections=self.corrections,
            model=model,
            overwrite=self.config.overwrite,
            retry_failed=self.config.retry_failed,
        )

    def stages(self, plan: ImagePlan) -> Ending:
        """The image's stages after `decide`, up to (not including) the stamp."""
        job = plan.job
        if not plan.decision.run:
            return Skipped(plan.decision.reason, plan.decision.status)
        (log.warning if plan.decision.warn else log.info)(
            "%s: %s; segmenting", job.name, plan.decision.reason
        )
        progress = lambda stage: self.enter(job, stage)  # noqa: E731
        progress("source fingerprint")
        plan.record["source_file"] = source_record(job.path)  # what the result is made from
        try:  # before anything is touched: a bad correction leaves the image as it was
            fixes = self.correct.read(plan)
        except CorrectionError as e:
            return Refused(str(e))
        except ImageFailure as e:
            return Failed(failure_reason(self.out, plan, e))
        with writing(job.name):
            # No "ok" stamp may outlive the outputs it vouches for.
            stamp_path(self.out, job.name).unlink(missing_ok=True)
        try:
            if fixes is None:
                img, result = self.segment(plan, progress)
            else:
                img, result = self.correct.redo(plan, fixes, progress)
        except ImageFailure as e:
            return Failed(failure_reason(self.out, plan, e))
        self.kept.keep(job, result.kept)
        if plan.localizer_warning:
            result.warnings.append(plan.localizer_warning)
        for warning in result.warnings:  # also in the stamp, the sidecars and the report
            log.warning("%s: %s", job.name, warning)
        image = Segmented(job, plan.options, img, result)
        done = Finished(result, [], segmentation_problems(plan.options, result))
        for stage in self.after:
            if stage.applies(job):
                self.enter(job, stage.name)
                check = partial(self.enter, job, stage.name)
                got = run_stage(stage, image, done.outputs, self.workers, self.memory, check)
                done.outputs.extend(o for o in got.outputs if o not in done.outputs)
                if got.problem:
                    done.problems.append(got.problem)
        return done

    def record(self, plan: ImagePlan, ending: Ending, status: Status, reason: str | None) -> None:
        """Log the image's outcome and stamp it (last); a refused correction stamps nothing,
        so the image's outputs stay exactly as they were."""
        name = plan.job.name
        match ending:
            case Skipped():
                log.info("%s: skipped, %s", name, reason)
            case Refused(problem):
                log.error("%s: %s; its outputs are left as they were", name, problem)
            case Failed():
                log.error("%s: failed: %s", name, reason)
                stamp(self.out, plan, status, reason, None)
            case Finished(result, outputs):
                stamp(self.out, plan, status, reason, result, outputs)
                (log.warning if status != Status.OK else log.info)(
                    "%s: %s%s", name, status, f" ({reason})" if reason else ""
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


def run_participant(config: RunConfig, engine_factory: EngineFactory) -> int:
    """The whole participant level; returns the exit code (see `exit_code`)."""
    out = config.output_dir
    res = config.resources
    devices = check_devices(res.devices)
    budget = plan_budget(
        devices, res.nprocs, res.omp_nthreads, res.in_flight, res.pipeline, res.cpu_workers
    )
    if config.dry_run:
        return dry_run(config, budget, devices)
    make_dir(out, "output folder")
    with ExitStack() as stack:
        logfile = stack.enter_context(run_log(run_log_path(out)))
        stack.enter_context(crash_reports(out, "participant"))
        say(f"spineseg {__version__}: participant level", f"log: {logfile}")
        if config.work_dir is not None:
            make_dir(config.work_dir, "work folder")
        scratch = stack.enter_context(temporary_files_in(config.work_dir))
        # Select first: a wrong label or a derivative dataset is named as such, and the
        # validator then sees only the subjects that will be segmented.
        selection = select(config)
        if not config.selection.skip_validation:
            subset = selection.subjects if config.selection.participant_labels else None
            validate_input(config.bids_dir, subset, scratch, logfile)
        say(*selection.describe())
        if config.reports_only:
            written = qc.rebuild_reports(
                out, config.bids_dir, config.selection.participant_labels, config.selection.sessions
            )
            say(*(f"wrote {w}" for w in written))
            return ExitCode.OK
        weights, model = resolve_model(config.weights)
        say(f"model: {describe_release(model.release)} ({weights.release_dir})")
        with writing(str(out)):
            changed = write_dataset_files(out, config.bids_dir, model)
        if changed:
            log.info("wrote %s", ", ".join(changed))
        held = process_rss() + networks_bytes(weights, len(devices))
        memory = plan_memory(res.mem_mb, budget.cpus, held + budget.cpu_workers * WORKER_BYTES)
        log.info("%s; %s", budget.describe(devices), memory.describe())
        lesions = resolve_lesion_runner(
            config.lesion_model, config.lesion_suffixes, budget.network_threads
        )
        run = ParticipantRun(
            config, selection, weights, model, engine_factory, budget, devices, memory, lesions
        )
        rows = run.run()
    if run.locked:
        say(
            "",
            f"{len(run.locked)} image(s) are being segmented by another run (their locks are "
            "held): run again once it has finished, before the group level",
        )
    return exit_code(rows, locked=bool(run.locked))


def exit_code(rows: Sequence[StatusRow], locked: bool = False) -> ExitCode:
    """1 when an image failed (now, or unchanged since an earlier run), else 75 when another
    run held some image (`locked`: not done yet, so `participant && group` must not go on),
    else 3 when one is partial, else 0: a script can tell "rerun with a fix" from "rerun
    later" from "review the partial ones"."""
    statuses = {row.status for row in rows}
    if Status.FAILED in statuses:
        return ExitCode.FAILED
    if locked:
        return ExitCode.TEMP_FAIL
    return ExitCode.PARTIAL if Status.PARTIAL in statuses else ExitCode.OK
