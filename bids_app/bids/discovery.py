"""Find the images to segment in a BIDS dataset (pybids), with fMRIPrep-style filter queries.

Knows nothing of networks: it turns participant/session labels, per-kind pybids queries and an
optional localizer query into an ordered list of `ImageJob`s, and explains what it selected.
Users' top complaint about BIDS filters is silent mismatches (fMRIPrep #2368, #2637), so the
effective queries are kept for printing and every unknown label or empty result is an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SUFFIXES = ("T2w", "T1w")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
LOCALIZER_KEY = "localizer"
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
# BIDS file-name keys people type in filters, mapped to pybids' entity names.
ENTITY_ALIASES = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "ce": "ceagent",
    "rec": "reconstruction",
    "dir": "direction",
}


class DiscoveryError(Exception):
    """The dataset or the selection cannot be used; one line naming the file and the problem."""


class FilterError(DiscoveryError):
    """A filter file or localizer query is malformed."""


class UnknownLabelError(DiscoveryError):
    """A participant or session label does not exist in the dataset."""


class EmptySelectionError(DiscoveryError):
    """The filters selected no image at all."""


class MissingImagesError(DiscoveryError):
    """A subject that was asked for by label has no image matching the queries."""


@dataclass(frozen=True)
class ImageJob:
    """One source image to segment.

    `path` is absolute; `relpath` is the BIDS-relative POSIX path (for BIDS URIs and names).
    `localizer` is the source image (same subject and session) whose final labels guide this
    one; `is_localizer` marks images that others depend on (they are processed first).
    """

    subject: str
    session: str | None
    path: Path
    suffix: str
    entities: dict = field(hash=False, compare=False)
    localizer: Path | None = None
    relpath: str = ""
    is_localizer: bool = False

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Selection:
    """What discovery chose, and the queries that chose it (JSON-ready, null/"*" kept)."""

    jobs: list[ImageJob]
    queries: dict[str, dict]
    localizer_query: dict | None = None
    skipped_subjects: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return sorted({j.subject for j in self.jobs})

    @property
    def sessions(self) -> list[tuple[str, str | None]]:
        return sorted({(j.subject, j.session) for j in self.jobs}, key=lambda s: (s[0], s[1] or ""))

    def describe(self) -> list[str]:
        """Human-readable lines: effective queries, then subjects x sessions x images."""
        lines = ['Effective queries (pybids; null = entity absent, "*" = any value):']
        for kind, query in self.queries.items():
            lines.append(f"  {kind}: {json.dumps(query)}")
        if self.localizer_query is not None:
            lines.append(f"  {LOCALIZER_KEY}: {json.dumps(self.localizer_query)}")
        n_sub, n_ses, n_img = len(self.subjects), len(self.sessions), len(self.jobs)
        lines.append(f"Selection: {n_sub} subject(s) x {n_ses} session(s) x {n_img} image(s)")
        for job in self.jobs:
            where = f"sub-{job.subject}" + (f" ses-{job.session}" if job.session else "")
            extra = " [localizer]" if job.is_localizer else ""
            if job.localizer is not None:
                extra += f" (localizer: {job.localizer.name})"
            lines.append(f"  {where}: {job.relpath}{extra}")
        if self.skipped_subjects:
            skipped = ", ".join(f"sub-{s}" for s in self.skipped_subjects)
            lines.append(f"No matching image (skipped): {skipped}")
        lines += [f"Note: {n}" for n in self.notes]
        return lines


# ---------------------------------------------------------------------------------------------
# Queries


def default_queries(suffixes: Iterable[str] = DEFAULT_SUFFIXES) -> dict[str, dict]:
    """One anat query per suffix, keyed by the lower-case suffix (fMRIPrep's "t1w"/"t2w")."""
    queries: dict[str, dict] = {}
    for suffix in suffixes:
        if not LABEL_RE.match(suffix):
            raise FilterError(f"--suffix {suffix}: a BIDS suffix is letters and digits only")
        queries[suffix.lower()] = {"datatype": "anat", "suffix": suffix}
    return queries


def localizer_base_query(suffix: str) -> dict:
    if not LABEL_RE.match(suffix):
        raise FilterError(f"--localizer-suffix {suffix}: a BIDS suffix is letters and digits only")
    return {"datatype": "anat", "suffix": suffix}


def read_query_source(text: str, what: str) -> dict:
    """A JSON object given inline or as a path to a JSON file (for --localizer)."""
    path = Path(text)
    source = str(path)
    if text.lstrip().startswith("{"):
        raw, source = text, what
    else:
        try:
            raw = path.read_text()
        except OSError as e:
            raise FilterError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise FilterError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise FilterError(f"{source}: {what} must be a JSON object of entity: value")
    return _normalise_query(data, source)


def load_filter_file(path: Path) -> dict[str, dict]:
    """Read a --bids-filter-file: {kind: {entity: value | null | "*" | [values]}}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FilterError(f"{path}: cannot read the filter file ({e.strerror or e})") from e
    except ValueError as e:
        raise FilterError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise FilterError(f"{path}: must be a JSON object of image kind -> query object")
    return {str(k).lower(): _normalise_query(v, f"{path} [{k}]") for k, v in data.items()}


def _normalise_query(query: Mapping, source: str) -> dict:
    out: dict = {}
    for key, value in query.items():
        name = ENTITY_ALIASES.get(key, key)
        if not _valid_value(value):
            raise FilterError(f"{source}: value of '{key}' must be a string, number, null or list")
        out[name] = value
    return out


def _valid_value(value: object) -> bool:
    if isinstance(value, list):
        return all(_valid_value(v) for v in value) and bool(value)
    return value is None or isinstance(value, (str, int, float, bool))


def merge_queries(
    base: Mapping[str, dict], filters: Mapping[str, dict], source: str = "filter file"
) -> dict[str, dict]:
    """Update each default query with the filter of the same kind (fMRIPrep semantics).

    Only the keys given change; the others keep their defaults (fMRIPrep #2637). A kind that
    is not selected is an error rather than silently ignored.
    """
    merged = {k: dict(v) for k, v in base.items()}
    for kind, query in filters.items():
        if kind not in merged:
            known = ", ".join(merged) or "none"
            raise FilterError(
                f"{source}: image kind '{kind}' is not selected (selected: {known}); "
                "select it with --suffix or remove it"
            )
        merged[kind].update(query)
    return merged


def _to_pybids(value: object) -> object:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list):
        return [_to_pybids(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Discovery


def _known_entities() -> set[str]:
    from bids.layout.models import Config

    return set(Config.load("bids").entities)


def _layout(bids_dir: Path, index_metadata: bool):
    from bids import BIDSLayout, BIDSLayoutIndexer

    try:
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=index_metadata)
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)
    except Exception as e:  # pybids raises many types for a broken dataset
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DiscoveryError(f"{bids_dir}: pybids cannot index the dataset ({msg})") from e


def _get(layout, query: Mapping, source: str, **fixed) -> list:
    args = {k: _to_pybids(v) for k, v in query.items()}
    args.update(fixed)
    args.setdefault("extension", NIFTI_EXTENSIONS)
    try:
        return layout.get(return_type="object", **args)
    except (ValueError, TypeError) as e:
        raise FilterError(f"{source}: invalid pybids query ({e})") from e


def discover(
    bids_dir: Path,
    *,
    queries: Mapping[str, dict],
    participants: Sequence[str] | None = None,
    sessions: Sequence[str] | None = None,
    localizer_query: Mapping | None = None,
) -> Selection:
    """Select the images of `bids_dir` matching `queries` (one pybids query per image kind).

    `participants`/`sessions` are labels without `sub-`/`ses-`; None means all. With a
    localizer query, the matching image of each subject/session is segmented first and set as
    the `localizer` of the other images of that subject/session.
    """
    bids_dir = Path(bids_dir).resolve()
    all_queries = [*queries.values(), *([localizer_query] if localizer_query else [])]
    keys = {k for q in all_queries for k in q}
    layout = _layout(bids_dir, index_metadata=bool(keys - _known_entities()))

    subjects = sorted(layout.get_subjects())
    if participants:
        unknown = sorted(set(participants) - set(subjects))
        if unknown:
            raise UnknownLabelError(
                f"{bids_dir}: participant label(s) not found: {', '.join(unknown)} "
                f"(found: {', '.join(subjects) or 'none'}); if the data are there, check that "
                "the folder is mounted in the container"
            )
        subjects = sorted(set(participants))
    if not subjects:
        raise EmptySelectionError(f"{bids_dir}: no sub-* folder found")
    fixed: dict[str, object] = {"subject": subjects}
    if sessions:
        found = sorted(layout.get_sessions(subject=subjects))
        unknown = sorted(set(sessions) - set(found))
        if unknown:
            raise UnknownLabelError(
                f"{bids_dir}: session label(s) not found for the selected participants: "
                f"{', '.join(unknown)} (found: {', '.join(found) or 'none'})"
            )
        fixed["session"] = sorted(set(sessions))

    files: dict[Path, tuple] = {}
    for kind, query in queries.items():
        for f in _get(layout, query, f"query '{kind}'", **fixed):
            files.setdefault(Path(f.path), (f, False))
    notes: list[str] = []
    localizers: dict[tuple[str, str | None], Path] = {}
    if localizer_query is not None:
        by_group: dict[tuple[str, str | None], list] = {}
        for f in _get(layout, localizer_query, "localizer query", **fixed):
            ent = f.get_entities()
            by_group.setdefault((ent["subject"], ent.get("session")), []).append(f)
        for group, found_files in sorted(by_group.items(), key=lambda g: (g[0][0], g[0][1] or "")):
            found_files.sort(key=lambda f: f.path)
            chosen = found_files[0]
            if len(found_files) > 1:
                others = ", ".join(Path(f.path).name for f in found_files[1:])
                notes.append(
                    f"several localizers match; using {Path(chosen.path).name}, not {others}"
                )
            localizers[group] = Path(chosen.path)
            files[Path(chosen.path)] = (chosen, True)

    jobs = [_job(f, bids_dir, is_loc, localizers) for f, is_loc in files.values()]
    if localizer_query is not None:
        unguided = sorted({(j.subject, j.session) for j in jobs} - set(localizers))
        for sub, ses in unguided:
            where = f"sub-{sub}" + (f" ses-{ses}" if ses else "")
            notes.append(f"{where}: no localizer image; its images run without one")
    jobs.sort(key=lambda j: (j.subject, j.session or "", not j.is_localizer, j.relpath))

    printable = {k: dict(q, **_fixed_json(fixed)) for k, q in queries.items()}
    loc_printable = dict(localizer_query, **_fixed_json(fixed)) if localizer_query else None
    selection = Selection(jobs, printable, loc_printable, notes=notes)
    empty = sorted(set(subjects) - {j.subject for j in jobs})
    if not jobs:
        shown = "; ".join(f"{k}: {json.dumps(q)}" for k, q in printable.items())
        raise EmptySelectionError(f"{bids_dir}: the queries selected no image ({shown})")
    if empty and participants:
        raise MissingImagesError(
            f"{bids_dir}: no image matches the queries for sub-{', sub-'.join(empty)}"
        )
    selection.skipped_subjects = empty
    return selection


def _fixed_json(fixed: Mapping[str, object]) -> dict:
    return {k: v for k, v in fixed.items() if k == "session"}


def _job(bids_file, bids_dir: Path, is_localizer: bool, localizers: Mapping) -> ImageJob:
    ent = dict(bids_file.get_entities())
    path = Path(bids_file.path)
    group = (ent["subject"], ent.get("session"))
    loc = localizers.get(group)
    return ImageJob(
        subject=ent["subject"],
        session=ent.get("session"),
        path=path,
        suffix=ent["suffix"],
        entities=ent,
        localizer=None if (loc is None or loc == path) else loc,
        relpath=path.relative_to(bids_dir).as_posix(),
        is_localizer=is_localizer,
    )
