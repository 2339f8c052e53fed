"""`--dry-run`: the selection and what a participant run would do with each image, and why,
from the stamps alone."""

from __future__ import annotations

from bids_app.corrections.catalog import CorrectionCatalog
from bids_app.plumbing.errors import ExitCode
from bids_app.plumbing.logs import say
from bids_app.run.config import RunConfig
from bids_app.run.resources import Budget
from bids_app.run.selection import select
from bids_app.run.stages.decide import decide


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
    say(f"It would run with a {budget.describe(devices)}.")
    catalog = CorrectionCatalog(config.corrections_dir, config.bids_dir, selection.jobs)
    by_path = {job.path: job for job in selection.jobs}
    for job in selection.jobs:
        decision = decide(  # the model is unknown: its hashes are not compared
            job,
            output_dir=config.output_dir,
            options=config.options,
            jobs=by_path,
            corrections=catalog,
            model=None,
            overwrite=config.overwrite,
            retry_failed=config.retry_failed,
        ).decision
        where = f"sub-{job.subject}" + (f" ses-{job.session}" if job.session else "")
        action = "segment" if decision.run else "skip"
        say(f"  {where}: {job.name}: would {action}: {decision.reason}")
    return ExitCode.OK
