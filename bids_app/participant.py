"""The participant level: select, then for each image decide, segment, write, QC and stamp.

Flow: validate the input -> select images (printed before any work) -> resolve weights -> for
each image: resume decision, segment, write outputs, QC, stamp. One engine serves every image
of the process. One bad image fails alone: the others go on, the run ends with a status
table and exit code 1. It reads a `RunConfig`, never the command line.
"""

from __future__ import annotations

import logging
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib

from bids_app import __version__, qc
from bids_app.bids import discovery as disc
from bids_app.bids.derivatives import (
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
    stamp_path,
    write_stamp,
)
from bids_app.bids.validation import ValidatorUnavailable, subject_view, validate
from bids_app.config import RunConfig, SelectionConfig
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import Engine, EngineError, EngineResult
from bids_app.errors import ExitCode, UserError, one_line
from bids_app.logs import run_log, say
from bids_app.nnunet.weights import WeightsError, describe_release, resolve_weights
from bids_app.qc.records import landmark_list

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Engine]  # (weights, device, threads) -> engine


def default_engine_factory(weights, device: str, threads: int | None) -> Engine:
    """The real engine; imported here so that --help, resume and tests need no torch."""
    from bids_app.engine.pipeline import SpineSegEngine

    return SpineSegEngine(weights, device=device, threads=threads)


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


def validate_input(bids_dir: Path, participants: Sequence[str] | None, scratch: Path) -> None:
    """bids-validator-deno on the input (only the selected subjects); exit 16 on errors."""
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
    log.info("BIDS validation passed (%d warning(s))", len(report.warnings))


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


def create_engine(factory: EngineFactory, weights, device: str, threads: int | None) -> Engine:
    """One engine per process; a device that cannot be used is a one-line error (exit 1)."""
    try:
        engine = factory(weights, device, threads)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except (ValueError, EngineError) as e:
        raise UserError(
            ExitCode.FAILED,
            f"--device {device}: {one_line(e)} (containers need `--gpus all` with Docker "
            "or `--nv` with Apptainer for CUDA)",
        ) from e
    log.info("engine ready (device %s, threads %s)", engine.device, engine.threads)
    return engine


def load_image(path: Path) -> nib.Nifti1Image:
    """The image, opened read-only by nibabel (never written); unreadable = ImageFailure."""
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise ImageFailure(f"{path.name}: cannot read the image ({one_line(e)})") from e
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
) -> EngineResult:
    """Run the engine on one loaded image; every per-image problem becomes an ImageFailure."""
    try:
        return engine.segment(
            img,
            options,
            loc=loc,
            name=name,
            progress=lambda stage: log.debug("%s: %s", name, stage),
        )
    except WeightsError as e:  # models load on first use: bad weights stop the run (78)
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except EngineError as e:
        raise ImageFailure(one_line(e)) from e
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise ImageFailure(f"{name}: cannot read the image data ({one_line(e)})") from e
    except MemoryError as e:
        raise ImageFailure(f"{name}: out of memory (use fewer threads or a GPU)") from e
    except Exception as e:  # a bug must not cost the other images; the log keeps the trace
        log.exception("%s: unexpected error", name)
        raise ImageFailure(f"{name}: unexpected {type(e).__name__}: {one_line(e)}") from e


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
        job = self.job
        seconds = time.monotonic() - self.started
        return StatusRow(job.subject, job.session, job.name, status, reason, seconds)


class ParticipantRun:
    """Segments the selected images one by one with a single, lazily created engine."""

    def __init__(
        self,
        config: RunConfig,
        selection: disc.Selection,
        weights,
        model: ModelInfo,
        engine_factory: EngineFactory,
    ):
        self.config, self.selection = config, selection
        self.out = config.output_dir
        self.weights, self.model = weights, model
        self.engine_factory = engine_factory
        self._engine: Engine | None = None
        self.by_path = {job.path: job for job in selection.jobs}

    def engine(self) -> Engine:
        """Created on first need, so a fully resumed run never loads torch or the models."""
        if self._engine is None:
            res = self.config.resources
            self._engine = create_engine(
                self.engine_factory, self.weights, res.device, res.network_threads
            )
        return self._engine

    def run(self) -> list[StatusRow]:
        rows: list[StatusRow] = []
        jobs = self.selection.jobs
        try:
            for i, job in enumerate(jobs):
                log.info("[%d/%d] %s", i + 1, len(jobs), job.relpath)
                rows.append(self.process(job))
                last_of_subject = i + 1 == len(jobs) or jobs[i + 1].subject != job.subject
                if last_of_subject:
                    self.subject_report(job.subject, rows)
        finally:
            if rows:
                say("", "Status:", *status_table(rows))
        return rows

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
        """Decide, then segment, write, QC and stamp one image."""
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
        engine = self.engine()
        try:
            img, result = self.segment(engine, plan)
        except ImageFailure as e:
            return self.fail(plan, str(e))
        if plan.localizer_warning:
            result.warnings.append(plan.localizer_warning)
        for warning in result.warnings:  # also in the stamp, the sidecars and the report
            log.warning("%s: %s", job.name, warning)
        outputs = self.write(plan, result)
        status, reason = self.outcome(plan, result)
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
        """The image's options (with its localizer) and whether its stamp lets us skip it."""
        started = time.monotonic()
        loc_rel, loc_warning = self.localizer_labels(job)
        options = replace(self.config.options, localizer=loc_rel)
        opts_hash = options_hash(options.record())
        old = read_stamp(stamp_path(self.out, job.name))
        decision = resume_decision(
            old,
            output_dir=self.out,
            app_version=__version__,
            opts_hash=opts_hash,
            model=self.model.stamp(),
            overwrite=self.config.overwrite,
        )
        record = {
            "source": job.relpath,
            "subject": job.subject,
            "session": job.session,
            "app_version": __version__,
            "options_hash": opts_hash,
            "options": options.record(),
            "model": self.model.stamp(),
        }
        return ImagePlan(job, options, decision, old, record, loc_warning, started)

    def segment(self, engine: Engine, plan: ImagePlan) -> tuple[nib.Nifti1Image, EngineResult]:
        """Load the source (and localizer labels) once and run the engine."""
        job = plan.job
        img = load_image(job.path)
        loc = load_image(self.out / plan.options.localizer) if plan.options.localizer else None
        return img, segment_image(engine, img, plan.options, name=job.name, loc=loc)

    def fail(self, plan: ImagePlan, reason: str) -> StatusRow:
        """Stamp a failed image with its one-line reason."""
        log.error("%s: failed: %s", plan.job.name, reason)
        self._write_stamp(
            plan, Status.FAILED, reason, device=None, timings={}, landmarks={}, warnings=[]
        )
        return plan.row(Status.FAILED, reason)

    def write(self, plan: ImagePlan, result: EngineResult) -> list[str]:
        """The image outputs and their sidecars; returns their output-relative paths."""
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


def run_participant(config: RunConfig, engine_factory: EngineFactory) -> int:
    """The whole participant level; returns the exit code (1 when any image failed)."""
    out = config.output_dir
    make_dir(out, "output folder")
    with ExitStack() as stack:
        logfile = stack.enter_context(run_log(run_log_path(out)))
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
            validate_input(config.bids_dir, subset, scratch)
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
        rows = ParticipantRun(config, selection, weights, model, engine_factory).run()
    bad = [r for r in rows if r.status in (Status.FAILED, Status.PARTIAL)]
    return ExitCode.FAILED if bad else ExitCode.OK
