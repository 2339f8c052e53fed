"""Find the images to segment in a BIDS dataset (pybids), with fMRIPrep-style filter queries.

Knows nothing of networks: it turns participant/session labels, per-kind pybids queries and an
optional localizer query into an ordered list of `ImageJob`s, and explains what it selected.
Users' top complaint about BIDS filters is silent mismatches (fMRIPrep #2368, #2637), so the
effective queries are kept for printing and every unknown label or empty result is an error.
Entities come from the dataset-relative path only: pybids 0.22 parses the absolute path
(pybids #1270), so its patterns are anchored below the dataset root here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from bids_app.bids.derivatives import DERIVATIVE_ENTITY_ORDER
from bids_app.bids.stamps import source_stem
from bids_app.bids.validation import subject_view
from bids_app.plumbing.errors import one_line

DEFAULT_SUFFIXES = ("T2w", "T1w")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
LOCALIZER_KEY = "localizer"
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
# BIDS file-name keys people type in filters, mapped to pybids' entity names.
# Note on an image left out because of its name; also searched to explain an empty selection.
LEFT_OUT = "not segmented, its name carries derivative entities"
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
    """A session label does not exist for the selected participants."""


class EmptySelectionError(DiscoveryError):
    """The filters selected no image at all."""


class MissingImagesError(DiscoveryError):
    """A participant asked for on the command line has no usable image (or no folder at all)."""


class DerivativeInputError(DiscoveryError):
    """The input is a derivative dataset; SpineSeg segments raw BIDS images."""


class OutputClashError(DiscoveryError):
    """Two selected images would write the same outputs and status stamp."""


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

    def summary(self) -> str:
        """One line of counts; sessions are counted as subject-session pairs, and only if any.

        "x sessions" alone is ambiguous (labels or pairs?) and wrong without sessions.
        """
        parts = [f"{len(self.subjects)} subject(s)"]
        pairs = [ses for _, ses in self.sessions if ses is not None]
        if pairs:
            without = len({sub for sub, ses in self.sessions if ses is None})
            if without:
                parts[0] += f" ({without} without sessions)"
            labels = ", ".join(sorted(set(pairs)))
            parts.append(f"{len(pairs)} subject-session pair(s) (sessions: {labels})")
        parts.append(f"{len(self.jobs)} image(s)")
        return "Selection: " + ", ".join(parts)

    def describe(self) -> list[str]:
        """Human-readable lines: effective queries, the counts, then one line per image."""
        lines = ['Effective queries (pybids; null = entity absent, "*" = any value):']
        for kind, query in self.queries.items():
            lines.append(f"  {kind}: {json.dumps(query)}")
        if self.localizer_query is not None:
            lines.append(f"  {LOCALIZER_KEY}: {json.dumps(self.localizer_query)}")
        lines.append(self.summary())
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
            raise FilterError(f"{path}: cannot read {what} ({_reason(e, path)})") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise FilterError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise FilterError(f"{source}: {what} must be a JSON object of entity: value")
    return _normalise_query(data, source)


def _read_json(path: Path, what: str, error: type[DiscoveryError]) -> object:
    """A JSON file the user gave us; unreadable or malformed = `error`, one line."""
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({_reason(e, path)})") from e
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e})") from e


def load_filter_file(path: Path) -> dict[str, dict]:
    """Read a --bids-filter-file: {kind: {entity: value | null | "*" | [values]}}."""
    path = Path(path)
    data = _read_json(path, "the filter file", FilterError)
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


def _reason(error: Exception, *paths: Path) -> str:
    """First line of an error, without the paths that the message already starts with."""
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    text = text.splitlines()[0] if text.strip() else type(error).__name__
    for path in paths:
        text = re.sub(rf"[:,]?\s*'?{re.escape(str(path))}'?", "", text)
    return text.strip() or type(error).__name__


def _listing(names: Sequence[str], prefix: str = "sub-", limit: int = 10) -> str:
    """ "sub-01, sub-02, ... (250 in all)": one line even for a large dataset."""
    if not names:
        return "none"
    shown = ", ".join(f"{prefix}{name}" for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_raw_dataset(bids_dir: Path) -> None:
    """Refuse a derivative dataset: its images carry space-/res-/desc- entities and are not
    what the networks were trained on, and SpineSeg's names would extend them invalidly.

    An unreadable description is left to the caller's own check (the CLI reports it).
    """
    bids_dir = Path(bids_dir)
    description = bids_dir / "dataset_description.json"
    try:
        data = json.loads(description.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or data.get("DatasetType") != "derivative":
        return
    made_by = _names_of(data.get("GeneratedBy"), ("Name", "Version"))
    sources = _names_of(data.get("SourceDatasets"), ("URL", "DOI", "Version"))
    where = f" ({'; '.join(sources)})" if sources else ""
    parent = bids_dir.resolve().parent
    if parent.name == "derivatives" and (parent.parent / "dataset_description.json").is_file():
        where += f", probably {parent.parent}"
    raise DerivativeInputError(
        f'{description}: a derivative dataset (DatasetType "derivative"'
        + (f", generated by {', '.join(made_by)}" if made_by else "")
        + f"); SpineSeg segments raw BIDS images: give it the raw dataset{where}"
    )


def _names_of(entries: object, keys: Sequence[str]) -> list[str]:
    """ "fMRIPrep 23.1.0" from GeneratedBy/SourceDatasets entries, ignoring malformed ones."""
    if not isinstance(entries, list):
        return []
    names = [" ".join(str(e[k]) for k in keys if e.get(k)) for e in entries if isinstance(e, dict)]
    return [n for n in names if n]


def derivative_entities(name: str) -> list[str]:
    """Derivative entities (space, res, desc, ...) in a file name: outputs named after such a
    source would repeat or misorder them, which the BIDS validator rejects."""
    keys = [part.split("-", 1)[0] for part in source_stem(name).split("_")[:-1]]
    return [k for k in keys if k in DERIVATIVE_ENTITY_ORDER]


def _known_entities() -> set[str]:
    from bids.layout.models import Config

    return set(Config.load("bids").entities)


def _anchored_config(root: Path) -> dict:
    """pybids' BIDS config with every entity pattern anchored below `root`.

    pybids 0.22 searches its patterns in the absolute path (pybids #1270): a parent folder
    named `perf`, `sub-x` or `ses-y` would become every file's datatype, subject or session.
    Patterns ending in `$` only see the file name and are kept as they are.
    """
    from bids.config import get_option

    config = json.loads(Path(get_option("config_paths")["bids"]).read_text())
    anchor = "^" + re.escape(str(root)) + r"(?=[/\\]).*?"
    for entity in config["entities"]:
        pattern = entity.get("pattern")
        if pattern and not pattern.endswith("$"):
            entity["pattern"] = anchor + pattern
    return config


def subject_folders(bids_dir: Path) -> list[str]:
    """Labels of the `sub-*` folders at the top of the dataset (one directory listing)."""
    with os.scandir(bids_dir) as entries:
        return sorted(
            e.name[4:] for e in entries if e.name.startswith("sub-") and e.is_dir() and e.name[4:]
        )


def _layout(bids_dir: Path, index_metadata: bool):
    from bids import BIDSLayout, BIDSLayoutIndexer

    if not bids_dir.is_dir():
        raise DiscoveryError(f"{bids_dir}: not a folder")
    try:
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=index_metadata)
        config = _anchored_config(bids_dir)
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, config=[config])
    except Exception as e:  # pybids raises many types for a broken dataset
        raise DiscoveryError(
            f"{bids_dir}: pybids cannot index the dataset ({_reason(e, bids_dir)})"
        ) from e


@contextmanager
def _index(bids_dir: Path, index_metadata: bool, subjects: Sequence[str] | None) -> Iterator:
    """pybids' index, and the root its paths lie under: of the whole dataset (`subjects` None),
    or of a view holding only the top-level files and these subjects' folders (None when
    there is none). pybids never walks the other subjects: a one-subject call of a 10,000-
    subject dataset indexes one folder, as fMRIPrep's and MRIQC's participant filter does."""
    if subjects is None:
        yield _layout(bids_dir, index_metadata), bids_dir
    elif not subjects:
        yield None, bids_dir
    else:
        with tempfile.TemporaryDirectory(prefix="spineseg-selection-") as tmp:
            view = subject_view(bids_dir, subjects, Path(tmp) / bids_dir.name)
            yield _layout(view, index_metadata), view


def _rebased(job: ImageJob, view: Path, bids_dir: Path) -> ImageJob:
    """The job with its paths in the dataset instead of the view it was indexed through."""
    if view == bids_dir:
        return job
    loc = job.localizer
    return replace(
        job,
        path=bids_dir / job.relpath,
        localizer=None if loc is None else bids_dir / loc.relative_to(view),
    )


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
    listed_participants: Sequence[str] | None = None,
    sessions: Sequence[str] | None = None,
    localizer_query: Mapping | None = None,
) -> Selection:
    """Select the images of `bids_dir` matching `queries` (one pybids query per image kind).

    Labels are given without `sub-`/`ses-`; None means all. `participants` were asked for one
    by one (command line): each must have a usable image (MissingImagesError). Those of
    `listed_participants` come from a list file such as participants.tsv, which may name
    subjects without anatomy (MEG's sub-emptyroom): they are skipped with a note, like
    unlisted subjects without a matching image. With a localizer query, the matching image of
    each subject/session is segmented first and set as the `localizer` of the other images of
    that subject/session.
    """
    bids_dir = Path(bids_dir).resolve()
    check_raw_dataset(bids_dir)
    all_queries = [*queries.values(), *([localizer_query] if localizer_query else [])]
    keys = {k for q in all_queries for k in q}
    index_metadata = bool(keys - _known_entities())
    asked = list(dict.fromkeys(participants or []))
    listed = [label for label in dict.fromkeys(listed_participants or []) if label not in asked]
    chosen = asked + listed
    found = subject_folders(bids_dir) if chosen else None
    wanted = sorted(set(chosen) & set(found)) if found is not None else None
    with _index(bids_dir, index_metadata, wanted) as (layout, root):
        if found is None:
            found = sorted(layout.get_subjects())
        if not found:
            raise EmptySelectionError(f"{bids_dir}: no sub-* folder found")
        candidates = chosen or found
        subjects = found if wanted is None else wanted
        fixed: dict[str, object] = {"subject": subjects}
        if sessions and layout is not None:
            found_sessions = sorted(layout.get_sessions(subject=subjects))
            unknown = sorted(set(sessions) - set(found_sessions))
            if unknown:
                raise UnknownLabelError(
                    f"{bids_dir}: session label(s) not found for the selected participants: "
                    f"{', '.join(unknown)} (found: {', '.join(found_sessions) or 'none'})"
                )
            fixed["session"] = sorted(set(sessions))

        notes: list[str] = []
        printable = {k: dict(q, **_fixed_json(fixed)) for k, q in queries.items()}
        loc_printable = dict(localizer_query, **_fixed_json(fixed)) if localizer_query else None
        jobs = []
        if layout is not None:
            found_jobs = _jobs(layout, root, queries, localizer_query, fixed, notes)
            jobs = [_rebased(job, root, bids_dir) for job in found_jobs]
    selection = Selection(jobs, printable, loc_printable, notes=notes)
    with_images = set(selection.subjects)
    missing = [s for s in asked if s not in with_images]
    if missing:
        raise MissingImagesError(_missing_message(bids_dir, missing, found, selection))
    if not jobs:
        raise EmptySelectionError(
            f"{bids_dir}: the queries selected no image ({_shown(printable)})" + _left_out(notes)
        )
    selection.skipped_subjects = sorted(set(candidates) - with_images)
    absent = [s for s in listed if s not in found]
    if absent:
        notes.append(f"listed participant(s) without a folder in the dataset: {_listing(absent)}")
    return selection


def _jobs(
    layout,
    bids_dir: Path,
    queries: Mapping[str, dict],
    localizer_query: Mapping | None,
    fixed: Mapping[str, object],
    notes: list[str],
) -> list[ImageJob]:
    """The images of every query, localizers first within their subject/session."""
    files: dict[Path, tuple] = {}
    for kind, query in queries.items():
        for f in _raw_only(_get(layout, query, f"query '{kind}'", **fixed), notes):
            files.setdefault(Path(f.path), (f, False))
    localizers: dict[tuple[str, str | None], Path] = {}
    if localizer_query is not None:
        by_group: dict[tuple[str, str | None], list] = {}
        for f in _raw_only(_get(layout, localizer_query, "localizer query", **fixed), notes):
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
    check_output_names(jobs)
    return jobs


def check_output_names(jobs: Sequence[ImageJob]) -> None:
    """Refuse images whose outputs would be one another's (OutputClashError, one line).

    Outputs, status stamps and locks are named after the source name without its extension,
    so `x_T2w.nii` beside `x_T2w.nii.gz` (which the BIDS validator accepts) would share them
    and one result would silently replace the other. Names are compared ignoring case, as a
    case-insensitive output file system (macOS, SMB) would. Nothing can tell which of the two
    the user meant, so neither is segmented: the run stops before any work.
    """
    seen: dict[str, ImageJob] = {}
    clashes: list[tuple[ImageJob, ImageJob]] = []
    for job in jobs:
        key = source_stem(job.name).casefold()
        if key in seen:
            clashes.append((seen[key], job))
        else:
            seen[key] = job
    if not clashes:
        return
    first, second = clashes[0]
    more = f" ({len(clashes) - 1} more such pair(s))" if len(clashes) > 1 else ""
    raise OutputClashError(
        f"{first.relpath} and {second.relpath}: two selected images would write the same "
        f"outputs and status stamp ({source_stem(first.name)}_*){more}; remove or rename one "
        "of each pair, or leave one out with --bids-filter-file"
    )


def _raw_only(found: list, notes: list[str]) -> list:
    """Drop images whose names carry derivative entities, with one note for each."""
    keep = []
    for f in found:
        name = Path(f.path).name
        entities = derivative_entities(name)
        if not entities:
            keep.append(f)
            continue
        note = (
            f"{name}: {LEFT_OUT} ({', '.join(f'{e}-' for e in entities)}); "
            "SpineSeg segments raw BIDS images"
        )
        if note not in notes:
            notes.append(note)
    return keep


def _left_out(notes: Sequence[str]) -> str:
    """Why an empty selection may be empty: images left out for their derivative entities."""
    names = [n.split(":", 1)[0] for n in notes if LEFT_OUT in n]
    if not names:
        return ""
    return f"; {len(names)} image(s) left out for derivative entities: {_listing(names, '', 3)}"


def _missing_message(bids_dir: Path, missing: list[str], found: list[str], sel: Selection) -> str:
    absent = [s for s in missing if s not in found]
    empty = [s for s in missing if s in found]
    parts = []
    if absent:
        parts.append(f"{_listing(absent)} (not in the dataset, which has {_listing(found)})")
    if empty:
        parts.append(f"{_listing(empty)} (no image matches the queries)")
    text = f"{bids_dir}: no usable image for participant {'; '.join(parts)}"
    if empty and not sel.jobs:  # the queries may be what is wrong: show them
        text += f"; queries: {_shown(sel.queries)}"
    return text + _left_out(sel.notes)


def _shown(queries: Mapping[str, dict]) -> str:
    return "; ".join(f"{kind}: {json.dumps(query)}" for kind, query in queries.items())


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


# ---------------------------------------------------------------------------------------------
# Frozen selections (SLURM array tasks read the selection instead of indexing the dataset)

SELECTION_FORMAT = "spineseg-selection/1"


class FrozenSelectionError(DiscoveryError):
    """A frozen selection file is unreadable or malformed."""


def save_selection(selection: Selection, bids_dir: Path, path: Path) -> None:
    """Write `selection` as JSON with dataset-relative paths, so that the file stays valid
    wherever the dataset is mounted (a container binds it elsewhere)."""
    from bids_app.plumbing.atomic import write_json_atomic

    bids_dir = Path(bids_dir).resolve()
    by_path = {job.path: job.relpath for job in selection.jobs}
    images = [
        {
            "subject": job.subject,
            "session": job.session,
            "relpath": job.relpath,
            "suffix": job.suffix,
            "entities": {k: str(v) for k, v in job.entities.items()},
            "localizer": by_path.get(job.localizer) if job.localizer else None,
            "is_localizer": job.is_localizer,
        }
        for job in selection.jobs
    ]
    write_json_atomic(
        path,
        {
            "format": SELECTION_FORMAT,
            "bids_dir": str(bids_dir),
            "queries": selection.queries,
            "localizer_query": selection.localizer_query,
            "skipped_subjects": selection.skipped_subjects,
            "notes": selection.notes,
            "images": images,
        },
    )


def load_selection(path: Path, bids_dir: Path) -> Selection:
    """Read a selection written by `save_selection`; image paths are rebuilt under `bids_dir`."""
    path = Path(path)
    data = _read_json(path, "the selection", FrozenSelectionError)
    if not isinstance(data, dict) or data.get("format") != SELECTION_FORMAT:
        raise FrozenSelectionError(
            f"{path}: not a SpineSeg selection file (format {SELECTION_FORMAT} expected)"
        )
    root = Path(bids_dir).resolve()
    try:
        jobs = [_frozen_job(item, root) for item in data["images"]]
        check_output_names(jobs)
        return Selection(
            jobs,
            dict(data["queries"]),
            data["localizer_query"],
            list(data["skipped_subjects"]),
            list(data["notes"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FrozenSelectionError(
            f"{path}: malformed selection ({one_line(e, with_type=True)})"
        ) from e


def _frozen_job(item: Mapping, root: Path) -> ImageJob:
    def inside(relpath: str) -> Path:
        rel = Path(relpath)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"image {relpath!r} is not a path inside the dataset")
        return root / rel

    if not LABEL_RE.match(item["subject"]):
        raise ValueError(f"subject {item['subject']!r} is not a BIDS label")
    localizer = item["localizer"]
    return ImageJob(
        subject=item["subject"],
        session=item["session"],
        path=inside(item["relpath"]),
        suffix=item["suffix"],
        entities=dict(item["entities"]),
        localizer=inside(localizer) if localizer else None,
        relpath=item["relpath"],
        is_localizer=bool(item["is_localizer"]),
    )


def restrict_selection(
    selection: Selection,
    source: Path,
    participants: Sequence[str] | None,
    sessions: Sequence[str] | None,
) -> Selection:
    """The images of a frozen selection for some participants/sessions (one array task).

    A participant or session without images, or an image no longer in the dataset, is an
    error naming `source`: the dataset changed since the selection was written.
    """
    jobs = [
        job
        for job in selection.jobs
        if (not participants or job.subject in participants)
        and (not sessions or job.session in sessions)
    ]
    subjects = {job.subject for job in jobs}
    missing = [label for label in participants or () if label not in subjects]
    if missing:
        raise MissingImagesError(
            f"{source}: no image of {_listing(missing)} in this selection "
            f"(it has {_listing(selection.subjects)})"
        )
    if not jobs:
        raise UnknownLabelError(
            f"{source}: no image of session(s) {', '.join(sessions or ())} in this selection"
        )
    # A link without content (git-annex) is still in the dataset: that image fails alone.
    gone = [job.relpath for job in jobs if not (job.path.is_file() or job.path.is_symlink())]
    if gone:
        raise MissingImagesError(
            f"{source}: {gone[0]} is no longer in the dataset"
            + (f" (and {len(gone) - 1} more)" if len(gone) > 1 else "")
            + "; write the SLURM script again"
        )
    return Selection(jobs, selection.queries, selection.localizer_query, notes=selection.notes)
