"""The group level: summarise what the participant level wrote (reads output_dir only).

Which images exist is read from the status records (`logs/status/*.json`, via
`qc.records.collect`), not from the `sub-*` folders: a failed image writes no folder but
must still be listed, and a subject whose only image failed can still be selected. A record
whose listed outputs were deleted since is listed as missing, and the level exits 66.
"""

from __future__ import annotations

import logging

from bids_app import __version__, qc
from bids_app.bids.derivatives import run_log_path
from bids_app.plumbing.crash import crash_reports
from bids_app.plumbing.errors import ExitCode, UserError
from bids_app.plumbing.logs import run_log, say
from bids_app.qc.group import outputs_gone
from bids_app.qc.records import collect
from bids_app.run.config import RunConfig

log = logging.getLogger(__name__)


def run_group(config: RunConfig) -> int:
    """Group tables and `group.html`; exit 66 without participant records, 18 for
    participants given one by one that have none (those read from a file are skipped).

    Outputs that a stamp lists but that are gone also exit 66, after the tables are written
    (they list those images as missing): `participant && group` must not end in 0 then.
    """
    out = config.output_dir
    if not (out / "dataset_description.json").is_file():
        raise UserError(
            ExitCode.NO_INPUT,
            f"{out}: no participant-level outputs (dataset_description.json missing); "
            "run the participant level first",
        )
    selection = config.selection
    records = collect(out)
    recorded = sorted({r.subject for r in records})
    if not recorded:
        raise UserError(
            ExitCode.NO_INPUT,
            f"{out}: no participant-level records (logs/status/*.json); "
            "run the participant level first",
        )
    unknown = sorted(set(selection.participants or []) - set(recorded))
    if unknown:
        raise UserError(
            ExitCode.EMPTY_SELECTION,
            f"{out}: no participant-level records for participant(s) {', '.join(unknown)} "
            f"(found: {', '.join(recorded)})",
        )
    listed = selection.listed_participants or ()
    without = [p for p in listed if p not in recorded]
    chosen = [p for p in selection.participant_labels or () if p in recorded]
    if selection.participant_labels and not chosen:
        raise UserError(
            ExitCode.EMPTY_SELECTION,
            f"{out}: no participant-level records for any listed participant "
            f"(found: {', '.join(recorded)})",
        )
    with run_log(run_log_path(out)) as logfile, crash_reports(out, "group"):
        say(f"spineseg {__version__}: group level", f"log: {logfile}")
        if without:
            log.info("listed participant(s) without records, skipped: %s", ", ".join(without))
        sessions = list(selection.sessions) if selection.sessions else None
        page = qc.run_group(out, chosen or None, sessions, ratings_dir=config.ratings_dir)
        if page:
            say(f"wrote {page}")
        gone = [
            (r.key, why)
            for r in records
            if (not chosen or r.subject in chosen)
            and (sessions is None or r.session in sessions)
            and (why := outputs_gone(out, r.stamp))
        ]
        for key, why in gone:
            log.error("%s: %s", key, why)
    if gone:
        raise UserError(
            ExitCode.NO_INPUT,
            f"{out}: outputs of {len(gone)} image(s) are gone (listed above, and as missing "
            "in group_qc.tsv and group_worklist.tsv); run the participant level again",
        )
    return ExitCode.OK
