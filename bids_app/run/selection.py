"""Which images a participant run segments: the queries, input validation and discovery,
each problem turned into its documented exit code."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bids_app.bids import discovery as disc
from bids_app.bids.validation import ValidatorUnavailable, subject_view, validate
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.run.config import RunConfig, SelectionConfig

log = logging.getLogger(__name__)


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
            return disc.restrict_selection(frozen, cfg.frozen, cfg.participant_labels, cfg.sessions)
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
    except disc.OutputClashError as e:
        raise UserError(ExitCode.DATA_ERROR, str(e)) from e
    except disc.DiscoveryError as e:
        raise UserError(ExitCode.VALIDATION, str(e)) from e
