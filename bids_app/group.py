"""The group level: summarise what the participant level wrote (reads output_dir only)."""

from __future__ import annotations

from bids_app import __version__, qc
from bids_app.bids.derivatives import run_log_path
from bids_app.config import RunConfig
from bids_app.errors import ExitCode, UserError
from bids_app.logs import run_log, say


def run_group(config: RunConfig) -> int:
    """Group tables and `group.html`; exit 66 without participant outputs, 18 for unknown
    participants."""
    out = config.output_dir
    if not (out / "dataset_description.json").is_file():
        raise UserError(
            ExitCode.NO_INPUT,
            f"{out}: no participant-level outputs (dataset_description.json missing); "
            "run the participant level first",
        )
    participants, sessions = config.selection.participants, config.selection.sessions
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
        page = qc.run_group(
            out,
            list(participants) if participants else None,
            list(sessions) if sessions else None,
            ratings_dir=config.ratings_dir,
        )
        if page:
            say(f"wrote {page}")
    return ExitCode.OK
