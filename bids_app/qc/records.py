"""Where the QC files of an image live, and how reports find what participant level wrote.

Reports and the group summary read only files in output_dir: the status stamps
(`logs/status/*.json`), the per-image `*_qc.json` and `*_morphometry.tsv`, and the image
sidecars. An image is keyed by its source file name without extension
("sub-01_ses-01_acq-sag_T2w"), the key of its stamp.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bids_app.bids.derivatives import qc_output_paths
from bids_app.bids.stamps import INCOMPLETE, STATUS_DIR, read_stamp, source_stem
from bids_app.qc.flags import qc_status

NA = "n/a"
REFUSED_DIR = Path("logs") / "refused"  # one note per image whose correction was refused


def refused_path(output_dir: Path, source_name: str) -> Path:
    """Where the participant level notes that an image's correction was refused (the image's
    outputs and stamp are then left as they were)."""
    return Path(output_dir) / REFUSED_DIR / f"{source_stem(PurePosixPath(source_name).name)}.json"


_ENTITY_RE = re.compile(r"([A-Za-z]+)-([A-Za-z0-9]+)")


def entities(stem: str) -> dict[str, str]:
    """BIDS entities of a file name prefix ("sub-01_ses-01_acq-sag" -> {sub, ses, acq})."""
    return {m.group(1): m.group(2) for m in map(_ENTITY_RE.fullmatch, stem.split("_")) if m}


@dataclass(frozen=True)
class QCPaths:
    """Where one image's QC files go (absolute), as `bids.derivatives` names them."""

    root: Path
    files: Mapping[str, str]  # kind -> path relative to root

    @classmethod
    def of(cls, output_dir: Path, source: str, suffix: str) -> QCPaths:
        """For the BIDS source image at `source` (relative to the raw dataset)."""
        return cls(Path(output_dir), qc_output_paths(source, suffix))

    def _path(self, kind: str) -> Path:
        return self.root / self.files[kind]

    @property
    def morphometry(self) -> Path:
        return self._path("morphometry")

    @property
    def morphometry_json(self) -> Path:
        return self._path("morphometry_json")

    @property
    def qc(self) -> Path:
        return self._path("qc")

    @property
    def sagittal(self) -> Path:
        return self._path("sagittal")

    @property
    def axial(self) -> Path:
        return self._path("axial")

    @property
    def curvature(self) -> Path:
        return self._path("curvature")

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def split_source(name: str) -> tuple[str, str]:
    """(prefix, suffix) of a BIDS source file name ("sub-01_T2w.nii.gz" -> ("sub-01", "T2w"))."""
    stem = source_stem(PurePosixPath(name).name)
    prefix, _, suffix = stem.rpartition("_")
    return prefix, suffix


def landmark_list(value: object) -> list[str]:
    """Landmark names from a stamp (a list, or a {step: [names]} dict as the engine gives)."""
    if isinstance(value, Mapping):
        names: list[str] = []
        for v in value.values():
            names += [str(x) for x in v or [] if str(x) not in names]
        return names
    if isinstance(value, (list, tuple)):
        return [str(x) for x in value]
    return []


def format_value(value: object) -> str:
    """TSV cell text: 'n/a' for missing or non-finite numbers, 2 decimals for fractional floats.

    A whole number prints without decimals (a 1 mm voxel volume is "19954", not "19954.00").
    A value below 0.1 keeps three significant digits (a lesion load of 0.0021 is "0.00210",
    not "0.00"): a small non-zero share never reads as zero.
    """
    if value is None:
        return NA
    if isinstance(value, float):
        if not math.isfinite(value):
            return NA
        if value != 0 and abs(value) < 0.1:
            return f"{value:.{2 - math.floor(math.log10(abs(value)))}f}"
        return f"{value:.0f}" if round(value, 2).is_integer() else f"{value:.2f}"
    return str(value)


_BREAKS = re.compile(r"[\t\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")


def tsv_cell(value: object) -> str:
    """One TSV cell: `format_value`, with tabs and line breaks (a rating comment may hold
    them) turned into single spaces, so every row stays one line of the same columns."""
    return _BREAKS.sub(" ", format_value(value))


def tsv_text(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """A TSV table written through the csv module: exactly `columns`, in that order, one line
    per row; a cell holding a quote is quoted as the csv module (and pandas) reads it."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([tsv_cell(row.get(c)) for c in columns] for row in rows)
    return buf.getvalue()


def parse_cell(text: str) -> object:
    """TSV cell back to a value: int, float, NaN for 'n/a', else the text."""
    if text == NA:
        return math.nan
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def read_tsv(path: Path) -> list[dict[str, object]]:
    """Rows of a TSV written by `tsv_text` (empty when missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return [
                {k: parse_cell(v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")
            ]
    except (OSError, csv.Error):
        return []


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class ImageRecord:
    """Everything participant level left about one source image."""

    key: str  # source file name without extension; also the stamp's name
    subject: str
    session: str | None
    suffix: str
    stamp: dict = field(default_factory=dict)
    qc: dict = field(default_factory=dict)
    morphometry: list[dict[str, object]] = field(default_factory=list)
    refused: dict = field(default_factory=dict)  # the note of a refused correction, if any

    @property
    def status(self) -> str:
        """Stamp status; 'incomplete' when QC files exist without a stamp (run interrupted)."""
        return str(self.stamp.get("status") or INCOMPLETE)

    @property
    def reason(self) -> str | None:
        if self.stamp:
            return self.stamp.get("reason")
        return "no status stamp: the participant-level run did not finish this image"

    @property
    def source(self) -> str | None:
        return self.stamp.get("source")

    @property
    def flags(self) -> list[dict[str, str]]:
        return list(self.qc.get("flags") or [])

    def qc_status(self, extra_flags: Sequence[str] = ()) -> str:
        """ok / check / fail from the run status and the flags (plus the image's other
        findings: lesion flags, a refused correction)."""
        refused = ["correction_refused"] if self.refused else []
        return qc_status(self.status, [f["id"] for f in self.flags] + refused + list(extra_flags))

    def sidecar(self, root: Path) -> dict:
        """JSON sidecar of the final labels, when listed in the stamp."""
        for rel in self.stamp.get("outputs") or []:
            if rel.endswith(f"_seg-spine_desc-{self.suffix}_dseg.json"):
                return read_json(root / rel)
        return {}


def _wanted(value: str | None, allowed: Sequence[str] | None) -> bool:
    return allowed is None or (value is not None and value in allowed)


def _read_qc_files(rec: ImageRecord, files: QCPaths) -> None:
    """The image's qc.json and morphometry table, where `bids.derivatives` put them."""
    if files.qc.is_file():
        rec.qc = read_json(files.qc)
    if files.morphometry.is_file():
        rec.morphometry = read_tsv(files.morphometry)


def collect(
    output_dir: Path,
    participants: Sequence[str] | None = None,
    sessions: Sequence[str] | None = None,
) -> list[ImageRecord]:
    """Every image found in stamps or QC files, filtered, sorted by subject, session, key."""
    root = Path(output_dir)
    records: dict[str, ImageRecord] = {}
    for path in sorted((root / STATUS_DIR).glob("*.json")):
        stamp = read_stamp(path)
        if not stamp or not stamp.get("subject") or not stamp.get("source"):
            continue
        source = str(stamp["source"])
        _, suffix = split_source(source)
        rec = records[path.stem] = ImageRecord(
            key=path.stem,
            subject=str(stamp["subject"]),
            session=stamp.get("session"),
            suffix=suffix,
            stamp=stamp,
        )
        _read_qc_files(rec, QCPaths.of(root, source, suffix))
        rec.refused = read_json(refused_path(root, source))
    # QC files whose stamp is gone or broken: the image is listed (incomplete) from what its
    # qc.json says of itself, so no file name is parsed back.
    for path in sorted(root.glob("sub-*/**/*_qc.json")):
        qc = read_json(path)
        stem, kind, subject = (str(qc.get(k) or "") for k in ("stem", "suffix", "subject"))
        key = f"{stem}_{kind}"
        if not (stem and kind and subject) or key in records:
            continue
        rec = records[key] = ImageRecord(key, subject, qc.get("session"), kind)
        source = (path.parent.relative_to(root) / f"{key}.nii.gz").as_posix()
        _read_qc_files(rec, QCPaths.of(root, source, kind))
    chosen = [
        r
        for r in records.values()
        if _wanted(r.subject, participants) and (sessions is None or _wanted(r.session, sessions))
    ]
    return sorted(chosen, key=lambda r: (r.subject, r.session or "", r.key))
