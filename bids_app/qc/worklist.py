"""From QC to corrections: the work list of images to look at, and the viewer commands.

The group level writes `group_worklist.tsv`: every image rated bad or doubtful in a subject
report, whose run status is not "ok", whose correction was refused, or with a finding that
lists an image by itself (a possible vertebral fracture or a listhesis: image measures for
research, not diagnoses), with why it is listed and what a reviewer needs to open it.
`spineseg review OUTPUT_DIR` turns each row into FSLeyes and ITK-SNAP command lines (run one
after the other when the viewer is installed, printed otherwise).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from bids_app.bids.derivatives import final_output_relpath
from bids_app.bids.stamps import Status
from bids_app.plumbing.atomic import write_text_atomic
from bids_app.qc.records import NA, read_tsv, split_source, tsv_text

WORKLIST = "group_worklist.tsv"
COLUMNS = (
    "image",
    "status",
    "qc_status",
    "flags",
    "rating",
    "comment",
    "source",
    "labels",
    "listed_for",
)
TO_REVIEW = ("bad", "doubtful")
VIEWERS = ("fsleyes", "itksnap")


def _flags(row: Mapping[str, object]) -> str | None:
    ids = [c.removeprefix("flag_") for c, v in row.items() if c.startswith("flag_") and v == 1]
    return ",".join(ids) or None


def listed_for(
    row: Mapping[str, object], raised: Mapping[str, str], listing: Collection[str]
) -> list[str]:
    """Why a group_qc row needs a look (empty: it does not): a bad or doubtful rating, a run
    that is not ok, a refused correction, each raised flag of `listing` with its reason."""
    why = []
    if row.get("qc_rating") in TO_REVIEW:
        why.append(f"rated {row['qc_rating']}")
    if row.get("status") != Status.OK:
        why.append(f"run {row.get('status')}" + (f": {row['reason']}" if row.get("reason") else ""))
    if row.get("correction_refused"):
        why.append(f"correction refused: {row['correction_refused']}")
    why += [
        f"{flag}: {raised[flag]} (an image measure for research, not a diagnosis)"
        for flag in listing
        if flag in raised
    ]
    return why


def worklist_rows(
    qc_rows: Sequence[Mapping[str, object]],
    raised: Sequence[Mapping[str, str]] = (),
    listing: Collection[str] = (),
) -> list[dict[str, object]]:
    """Rows of group_qc.tsv that need a look: rated bad/doubtful, a run that is not ok, a
    correction that was refused, or a flag of `listing` raised (`raised`: each row's raised
    flags, flag -> reason, in the order of `qc_rows`)."""
    out = []
    for i, row in enumerate(qc_rows):
        source = row.get("source")
        why = listed_for(row, raised[i] if i < len(raised) else {}, listing)
        if not row.get("image") or not why:
            continue
        labels = None
        if isinstance(source, str):
            labels = final_output_relpath(source, split_source(source)[1])
        out.append(
            {
                "image": row["image"],
                "status": row.get("status"),
                "qc_status": row.get("qc_status"),
                "flags": _flags(row),
                "rating": row.get("qc_rating"),
                "comment": row.get("qc_comment"),
                "source": source,
                "labels": labels,
                "listed_for": "; ".join(why),
            }
        )
    return out


def write_worklist(
    root: Path,
    qc_rows: Sequence[Mapping[str, object]],
    raised: Sequence[Mapping[str, str]] = (),
    listing: Collection[str] = (),
) -> Path:
    """`group_worklist.tsv` (header only when nothing needs a look); see `worklist_rows`."""
    path = Path(root) / WORKLIST
    write_text_atomic(path, tsv_text(COLUMNS, worklist_rows(qc_rows, raised, listing)))
    return path


def raw_dir(output_dir: Path) -> Path | None:
    """The raw dataset the output links to (`DatasetLinks.raw`), when it does."""
    try:
        data = json.loads((Path(output_dir) / "dataset_description.json").read_text())
        link = data["DatasetLinks"]["raw"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (Path(output_dir) / link).resolve()


def viewer_commands(
    output_dir: Path, bids_dir: Path, row: Mapping[str, object]
) -> dict[str, list[str]]:
    """Viewer -> command line opening the image with its final labels (the labels only when
    they were written)."""
    image = str(Path(bids_dir) / str(row["source"]))
    labels = row.get("labels")
    seg = str(Path(output_dir) / str(labels)) if labels not in (None, NA) else None
    if seg is not None and not Path(seg).is_file():
        seg = None
    fsleyes = ["fsleyes", image] + ([seg, "--overlayType", "label", "--outline"] if seg else [])
    itksnap = ["itksnap", "-g", image] + (["-s", seg] if seg else [])
    return {"fsleyes": fsleyes, "itksnap": itksnap}


def review(
    output_dir: Path, bids_dir: Path | None, viewer: str | None, show: bool
) -> tuple[list[str], list[list[str]]]:
    """(lines to print, commands to run) for every row of the work list.

    `viewer` None picks the first installed of FSLeyes and ITK-SNAP; `show` (or no viewer
    installed) prints the commands instead of running them. ValueError: one line.
    """
    path = Path(output_dir) / WORKLIST
    if not path.is_file():
        raise ValueError(f"{path}: no work list; run the group level first")
    bids_dir = bids_dir or raw_dir(output_dir)
    if bids_dir is None:
        raise ValueError(
            f"{output_dir}: the output does not link to its raw dataset; give --bids-dir"
        )
    rows = [r for r in read_tsv(path) if r.get("source") not in (None, NA)]
    installed = [v for v in VIEWERS if shutil.which(v)]
    chosen = viewer or (installed[0] if installed else None)
    run = not show and chosen is not None and chosen in installed
    lines = [f"{len(rows)} image(s) to review ({path})"]
    if not run:
        lines.append("no viewer run (none installed, or --print); the commands:")
    commands = []
    for row in rows:
        cmds = viewer_commands(output_dir, bids_dir, row)
        why = ", ".join(
            str(row[c]) for c in ("listed_for", "flags", "comment") if row.get(c) not in (None, NA)
        )
        lines.append(f"# {row['image']}: {why}")
        for name in (chosen,) if chosen else VIEWERS:
            lines.append("  " + subprocess.list2cmdline(cmds[name]))
        if run:
            commands.append(cmds[chosen])  # type: ignore[index]
    return lines, commands
