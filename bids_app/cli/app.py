"""The BIDS App proper: checks, selection, the participant loop and the group level.

Flow: check paths and labels -> validate the input -> select images (printed before any
work) -> resolve weights -> for each image: resume decision, segment, write outputs, QC,
stamp. One engine serves every image of the process. One bad image fails alone: the others
go on, the run ends with a status table and exit code 1.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from bids_app import __version__
from bids_app.bids import discovery as disc
from bids_app.bids.derivatives import (
    ModelInfo,
    image_output_paths,
    run_log_path,
    write_dataset_files,
    write_image_outputs,
)
from bids_app.bids.stamps import (
    FAILED,
    OK,
    PARTIAL,
    options_hash,
    read_stamp,
    resume_decision,
    stamp_path,
    write_stamp,
)
from bids_app.bids.validation import ValidatorUnavailable, subject_view, validate
from bids_app.cli import qc_hooks
from bids_app.cli.errors import ExitCode, UserError
from bids_app.cli.logs import run_log, say
from bids_app.engine.result import EngineError

log = logging.getLogger(__name__)

LEVELS = ("participant", "group")
SKIPPED = "skipped"
EngineFactory = Callable[..., object]  # (weights, device, threads) -> engine with .segment()


def default_engine_factory(weights, device: str, threads: int | None):
    """The real engine; imported here so that --help, resume and tests need no torch."""
    from bids_app.engine.pipeline import SpineSegEngine

    return SpineSegEngine(weights, device=device, threads=threads)


# ---------------------------------------------------------------------------------------------
# Checks


def expand_labels(values: Sequence[str] | None, prefix: str, option: str) -> list[str] | None:
    """Labels from the command line: strip `sub-`/`ses-`, read files, check, deduplicate.

    A value naming an existing file is read as one label per line (first column; a
    `participant_id`/`session_id` header and `#` comments are skipped), so participants.tsv
    can be passed as is.
    """
    if not values:
        return None
    labels: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise UserError(ExitCode.USAGE, f"{path}: cannot read ({e.strerror or e})") from e
            tokens = [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]
            tokens = [t for t in tokens if t not in ("participant_id", "session_id")]
            if not tokens:
                raise UserError(ExitCode.USAGE, f"{path}: {option} file holds no label")
        else:
            tokens = [value]
        for token in tokens:
            label = token.removeprefix(prefix)
            if not disc.LABEL_RE.match(label):
                raise UserError(
                    ExitCode.USAGE,
                    f"{option} {token!r}: a label is letters and digits only "
                    f"(with or without '{prefix}')",
                )
            if label not in labels:
                labels.append(label)
    return labels


@dataclass(frozen=True)
class Paths:
    bids_dir: Path
    output_dir: Path
    work_dir: Path | None


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None, level: str) -> Paths:
    """Refuse path combinations that would write into the input (§7.1), before any work."""
    bids_dir, output_dir = bids_dir.expanduser().resolve(), output_dir.expanduser().resolve()
    work = work_dir.expanduser().resolve() if work_dir else None
    suggestion = bids_dir / "derivatives" / "spineseg"
    if output_dir == bids_dir:
        raise UserError(
            ExitCode.USAGE, f"{output_dir}: output_dir is the input dataset; use {suggestion}"
        )
    if bids_dir in output_dir.parents and output_dir.parent != bids_dir / "derivatives":
        raise UserError(
            ExitCode.USAGE,
            f"{output_dir}: inside the input dataset only derivatives/<name> is allowed "
            f"(e.g. {suggestion})",
        )
    if work is not None and (work == bids_dir or bids_dir in work.parents):
        raise UserError(
            ExitCode.USAGE, f"{work}: the work dir must not be inside the input dataset"
        )
    if level == "participant":
        if not bids_dir.is_dir():
            raise UserError(ExitCode.USAGE, f"{bids_dir}: bids_dir is not a folder")
        description = bids_dir / "dataset_description.json"
        try:
            data = json.loads(description.read_text())
        except OSError as e:
            raise UserError(
                ExitCode.VALIDATION,
                f"{description}: cannot read ({e.strerror or e}); is this a BIDS dataset?",
            ) from e
        except ValueError as e:
            raise UserError(ExitCode.VALIDATION, f"{description}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise UserError(ExitCode.VALIDATION, f"{description}: must be a JSON object")
    return Paths(bids_dir, output_dir, work)


def _make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".spineseg-write-test-"):
            pass
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{path}: cannot create the {what} ({e.strerror or e})"
        ) from e


def build_queries(args) -> tuple[dict[str, dict], dict | None]:
    """Default queries per suffix, updated by the filter file; plus the localizer query."""
    try:
        queries = disc.default_queries(args.suffix or disc.DEFAULT_SUFFIXES)
        loc: dict | None = None
        if args.localizer_suffix:
            loc = disc.localizer_base_query(args.localizer_suffix)
        if args.localizer:
            loc = {
                **(loc or {"datatype": "anat"}),
                **disc.read_query_source(args.localizer, "--localizer"),
            }
        if args.bids_filter_file:
            filters = disc.load_filter_file(args.bids_filter_file)
            loc_filter = filters.pop(disc.LOCALIZER_KEY, None)
            queries = disc.merge_queries(queries, filters, str(args.bids_filter_file))
            if loc_filter is not None:
                if loc is None:
                    raise disc.FilterError(
                        f"{args.bids_filter_file}: has a 'localizer' query but neither "
                        "--localizer-suffix nor --localizer was given"
                    )
                loc.update(loc_filter)
    except disc.FilterError as e:
        raise UserError(ExitCode.USAGE, str(e)) from e
    return queries, loc


def validate_input(bids_dir: Path, participants: list[str] | None, scratch: Path) -> None:
    """bids-validator-deno on the input (only the selected subjects); exit 16 on errors."""
    target = (
        subject_view(bids_dir, participants, scratch / "bids-view") if participants else bids_dir
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


def select(args, paths: Paths, participants, sessions) -> disc.Selection:
    queries, loc_query = build_queries(args)
    try:
        return disc.discover(
            paths.bids_dir,
            queries=queries,
            participants=participants,
            sessions=sessions,
            localizer_query=loc_query,
        )
    except disc.FilterError as e:
        raise UserError(ExitCode.USAGE, str(e)) from e
    except (disc.UnknownLabelError, disc.EmptySelectionError) as e:
        raise UserError(ExitCode.EMPTY_SELECTION, str(e)) from e
    except disc.MissingImagesError as e:
        raise UserError(ExitCode.NO_INPUT, str(e)) from e
    except disc.DiscoveryError as e:
        raise UserError(ExitCode.VALIDATION, str(e)) from e


def resolve_model(weights_arg: str | None):
    from bids_app.nnunet.weights import WeightsError, resolve_weights

    try:
        weights = resolve_weights(weights_arg)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    return weights, ModelInfo.from_weights(weights)


# ---------------------------------------------------------------------------------------------
# Participant level


@dataclass
class StatusRow:
    subject: str
    session: str | None
    image: str
    status: str
    reason: str | None
    seconds: float


class ImageFailure(Exception):
    """One image cannot be segmented; the run goes on."""


def status_table(rows: Sequence[StatusRow]) -> list[str]:
    header = ("subject", "session", "image", "status", "seconds", "reason")
    cells = [
        (
            f"sub-{r.subject}",
            f"ses-{r.session}" if r.session else "-",
            r.image,
            r.status,
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


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def create_engine(factory: EngineFactory, weights, device: str, threads: int | None):
    """One engine per process; a device that cannot be used is a one-line error (exit 1)."""
    from bids_app.nnunet.weights import WeightsError

    try:
        engine = factory(weights, device, threads)
    except (ValueError, EngineError, WeightsError) as e:
        raise UserError(
            ExitCode.FAILED,
            f"--device {device}: {_one_line(e)} (containers need `--gpus all` with Docker "
            "or `--nv` with Apptainer for CUDA)",
        ) from e
    used = getattr(engine, "device", device)  # what "auto" became
    log.info("engine ready (device %s, threads %s)", used, getattr(engine, "threads", threads))
    return engine


def segment_image(
    engine,
    path: Path,
    *,
    loc_path: Path | None,
    step1_only: bool,
    iso: bool,
    top_disc: int | None = None,
):
    """Run the engine on one file; every per-image problem becomes an ImageFailure.

    The input is opened read-only by nibabel and never written.
    """
    name = path.name
    try:
        img = nib.load(str(path))
        loc = nib.load(str(loc_path)) if loc_path else None
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise ImageFailure(f"{name}: cannot read the image ({_one_line(e)})") from e
    try:
        return engine.segment(
            img,
            step1_only=step1_only,
            iso=iso,
            loc=loc,
            top_disc=top_disc,
            name=name,
            progress=lambda stage: log.debug("%s: %s", name, stage),
        )
    except EngineError as e:
        raise ImageFailure(_one_line(e)) from e
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise ImageFailure(f"{name}: cannot read the image data ({_one_line(e)})") from e
    except MemoryError as e:
        raise ImageFailure(f"{name}: out of memory (use fewer threads or a GPU)") from e
    except Exception as e:  # a bug must not cost the other images; the log keeps the trace
        log.exception("%s: unexpected error", name)
        raise ImageFailure(f"{name}: unexpected {type(e).__name__}: {_one_line(e)}") from e


class ParticipantRun:
    """Segments the selected images one by one with a single, lazily created engine."""

    def __init__(
        self,
        args,
        paths: Paths,
        selection: disc.Selection,
        weights,
        model: ModelInfo,
        engine_factory: EngineFactory,
    ):
        self.args, self.paths, self.selection = args, paths, selection
        self.out = paths.output_dir
        self.weights, self.model = weights, model
        self.engine_factory = engine_factory
        self._engine = None
        self.by_path = {job.path: job for job in selection.jobs}
        self.threads = args.omp_nthreads or args.nprocs
        if args.nprocs and self.threads:
            self.threads = min(self.threads, args.nprocs)

    def engine(self):
        """Created on first need, so a fully resumed run never loads torch or the models."""
        if self._engine is None:
            self._engine = create_engine(
                self.engine_factory, self.weights, self.args.device, self.threads
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
                stamp.get("status") in (OK, PARTIAL)
                and rel in listed
                and (self.out / rel).is_file()
            ):
                return rel, None
        why = stamp.get("reason") or stamp.get("status") or "not segmented"
        return None, f"localizer {loc_job.name} has no labels ({why}); segmented without it"

    def process(self, job: disc.ImageJob) -> StatusRow:
        t0 = time.monotonic()
        loc_rel, loc_warning = self.localizer_labels(job)
        options = {
            "step1_only": self.args.step1_only,
            "iso": self.args.iso,
            "localizer": loc_rel,
            "assume_top_disc": self.args.assume_top_disc,
        }
        opts_hash = options_hash(options)
        spath = stamp_path(self.out, job.name)
        old = read_stamp(spath)
        decision = resume_decision(
            old,
            output_dir=self.out,
            app_version=__version__,
            opts_hash=opts_hash,
            model=self.model.stamp(),
            overwrite=self.args.overwrite,
        )

        def row(status: str, reason: str | None) -> StatusRow:
            return StatusRow(
                job.subject, job.session, job.name, status, reason, time.monotonic() - t0
            )

        if not decision.run:
            log.info("%s: skipped, %s", job.name, decision.reason)
            return row(SKIPPED, decision.reason)
        (log.warning if decision.warn else log.info)(
            "%s: %s; segmenting", job.name, decision.reason
        )
        if loc_warning:
            log.warning("%s: %s", job.name, loc_warning)
        record = {
            "source": job.relpath,
            "subject": job.subject,
            "session": job.session,
            "app_version": __version__,
            "options_hash": opts_hash,
            "options": options,
            "model": self.model.stamp(),
        }
        with _writing(job.name):
            spath.unlink(missing_ok=True)  # no "ok" stamp may outlive the outputs it vouches for
        engine = self.engine()
        try:
            result = self.segment(engine, job, loc_rel)
        except ImageFailure as e:
            reason = str(e)
            log.error("%s: failed: %s", job.name, reason)
            with _writing(job.name):
                write_stamp(
                    spath,
                    {
                        **record,
                        "status": FAILED,
                        "reason": reason,
                        "device": None,
                        "timings": {"total": round(time.monotonic() - t0, 3)},
                        "landmarks": {},
                        "warnings": [],
                        "outputs": [],
                    },
                )
            return row(FAILED, reason)
        if loc_warning:
            result.warnings.append(loc_warning)
        with _writing(job.name):
            outputs = write_image_outputs(
                self.out, job.relpath, job.suffix, result, self.model, localizer_output=loc_rel
            )
        status, reason = OK, None
        if result.errors:
            status, reason = PARTIAL, "; ".join(result.errors)
        elif "final" not in result.native and not self.args.step1_only:
            status, reason = PARTIAL, "no final labels returned"
        qc_outputs, qc_error = qc_hooks.image_qc(self.out, job, result)
        if qc_error:
            status = PARTIAL
            reason = "; ".join(filter(None, [reason, f"QC: {qc_error}"]))
        outputs += [o for o in qc_outputs if o not in outputs]
        with _writing(job.name):
            _remove_stale(self.out, old, outputs)
            write_stamp(
                spath,
                {
                    **record,
                    "status": status,
                    "reason": reason,
                    "device": result.device,
                    "timings": {**result.timings, "total": round(time.monotonic() - t0, 3)},
                    "landmarks": result.landmarks,
                    "warnings": [*result.warnings, *result.errors],
                    "outputs": outputs,
                },
            )
        (log.warning if status != OK else log.info)(
            "%s: %s%s", job.name, status, f" ({reason})" if reason else ""
        )
        return row(status, reason)

    def segment(self, engine, job: disc.ImageJob, loc_rel: str | None):
        return segment_image(
            engine,
            job.path,
            loc_path=self.out / loc_rel if loc_rel else None,
            step1_only=self.args.step1_only,
            iso=self.args.iso,
            top_disc=self.args.assume_top_disc,
        )

    def subject_report(self, subject: str, rows: Sequence[StatusRow]) -> None:
        mine = [r for r in rows if r.subject == subject]
        fresh = any(r.status != SKIPPED for r in mine)
        if fresh or not (self.out / f"sub-{subject}.html").is_file():
            qc_hooks.subject_report(self.out, subject)


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


def run_participant(args, paths: Paths, engine_factory: EngineFactory) -> int:
    participants = expand_labels(args.participant_label, "sub-", "--participant-label")
    sessions = expand_labels(args.session_label, "ses-", "--session-label")
    _make_dir(paths.output_dir, "output folder")
    with ExitStack() as stack:
        logfile = stack.enter_context(run_log(run_log_path(paths.output_dir)))
        say(f"spineseg {__version__}: participant level", f"log: {logfile}")
        if paths.work_dir is not None:
            _make_dir(paths.work_dir, "work folder")
            scratch = paths.work_dir
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spineseg-")))
        if not args.skip_bids_validation:
            validate_input(paths.bids_dir, participants, scratch)
        selection = select(args, paths, participants, sessions)
        say(*selection.describe())
        if args.reports_only:
            written = qc_hooks.rebuild(paths.output_dir, paths.bids_dir, participants, sessions)
            say(*(f"wrote {w}" for w in written))
            return ExitCode.OK
        weights, model = resolve_model(args.weights)
        say(f"model: TotalSpineSeg {model.release} ({weights.root})")
        with _writing(str(paths.output_dir)):
            changed = write_dataset_files(paths.output_dir, paths.bids_dir, model)
        if changed:
            log.info("wrote %s", ", ".join(changed))
        rows = ParticipantRun(args, paths, selection, weights, model, engine_factory).run()
    bad = [r for r in rows if r.status in (FAILED, PARTIAL)]
    return ExitCode.FAILED if bad else ExitCode.OK


# ---------------------------------------------------------------------------------------------
# Group level


def run_group(args, paths: Paths) -> int:
    out = paths.output_dir
    if not (out / "dataset_description.json").is_file():
        raise UserError(
            ExitCode.NO_INPUT,
            f"{out}: no participant-level outputs (dataset_description.json missing); "
            "run the participant level first",
        )
    participants = expand_labels(args.participant_label, "sub-", "--participant-label")
    sessions = expand_labels(args.session_label, "ses-", "--session-label")
    found = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    if not found:
        raise UserError(
            ExitCode.NO_INPUT, f"{out}: no sub-* folder; run the participant level first"
        )
    unknown = sorted(set(participants or []) - set(found))
    if unknown:
        raise UserError(
            ExitCode.EMPTY_SELECTION,
            f"{out}: no outputs for participant(s) {', '.join(unknown)} "
            f"(found: {', '.join(found)})",
        )
    with run_log(run_log_path(out)) as logfile:
        say(f"spineseg {__version__}: group level", f"log: {logfile}")
        written = qc_hooks.group(out, participants, sessions)
        say(*(f"wrote {w}" for w in written))
    return ExitCode.OK


def run_bids_app(args, engine_factory: EngineFactory = default_engine_factory) -> int:
    """Run the parsed BIDS-App command line; raises UserError for anything the user can fix."""
    if args.analysis_level not in LEVELS:
        raise UserError(
            ExitCode.BAD_LEVEL,
            f"analysis level {args.analysis_level!r}: must be one of {', '.join(LEVELS)}",
        )
    paths = check_paths(args.bids_dir, args.output_dir, args.work_dir, args.analysis_level)
    if args.analysis_level == "group":
        return run_group(args, paths)
    return run_participant(args, paths, engine_factory)
