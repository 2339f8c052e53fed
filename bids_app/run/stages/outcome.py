"""How an image's way through the stages ended, and the one place where its status and
reason are decided from that (`status_of`); the run's status rows and table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bids_app.bids.discovery import ImageJob
from bids_app.bids.stamps import Status
from bids_app.engine.result import EngineResult


@dataclass(frozen=True)
class Skipped:
    """Not computed: done by an earlier run, or being computed by another one."""

    reason: str
    counts_as: Status = Status.SKIPPED  # a failure that is not retried still counts as one


@dataclass(frozen=True)
class Refused:
    """A correction that cannot be used: the image's outputs are left as they were."""

    problem: str


@dataclass(frozen=True)
class Failed:
    """Nothing usable: the one-line reason (naming the crash file of an unexpected error)."""

    reason: str


@dataclass(frozen=True)
class Finished:
    """Segmented and written; each problem a stage reported makes the image partial."""

    result: EngineResult
    outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


Ending = Skipped | Refused | Failed | Finished


def status_of(ending: Ending) -> tuple[Status, str | None]:
    """The image's status and reason: the only place they are decided."""
    match ending:
        case Skipped(reason, counts_as):
            return counts_as, reason
        case Refused(problem):
            return Status.FAILED, f"{problem}; outputs left as they were"
        case Failed(reason):
            return Status.FAILED, reason
        case Finished(problems=problems):
            said = [p for p in problems if p]
            return (Status.PARTIAL, "; ".join(said)) if said else (Status.OK, None)
    raise TypeError(f"not an ending: {ending!r}")


@dataclass
class StatusRow:
    subject: str
    session: str | None
    image: str
    status: Status
    reason: str | None
    seconds: float

    @classmethod
    def of(
        cls, job: ImageJob, status: Status, reason: str | None, started: float | None
    ) -> StatusRow:
        """The row of `job`, timed from `started` (None: it never started)."""
        seconds = time.monotonic() - started if started is not None else 0.0
        return cls(job.subject, job.session, job.name, status, reason, seconds)


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
