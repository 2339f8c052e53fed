"""Group level: tables and a page over every image, from participant-level files only.

Reads the stamps, qc.json and morphometry TSVs in output_dir (never a raw image, so the group
level runs without the BIDS data, MRIQC #1388), and never fails because one subject is
missing or failed: such images get a row saying so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from markupsafe import Markup

from bids_app import __version__
from bids_app.bids.stamps import MISSING, missing_outputs
from bids_app.lesions import qc as lesion_qc
from bids_app.plumbing import labels as L
from bids_app.plumbing.atomic import write_json_atomic, write_text_atomic
from bids_app.qc.alignment import TITLES
from bids_app.qc.flags import (
    FLAG_DESCRIPTIONS,
    GROUP_FLAGS,
    IMAGE_FLAGS,
    QC_STATUSES,
    Thresholds,
    group_outliers,
    tukey_fences,
)
from bids_app.qc.geometry import SPINE_ORDER
from bids_app.qc.measures import COLUMN_BY_NAME, MEASURE_COLUMNS, Column, number
from bids_app.qc.plots import Point, strip_plot
from bids_app.qc.ratings import PROBLEMS, RATINGS, RATINGS_DIR, Rating, read_ratings
from bids_app.qc.records import NA, ImageRecord, collect, tsv_text
from bids_app.qc.report import CORD_CSA_WARNING, environment, figure, now
from bids_app.qc.worklist import write_worklist
from bids_app.vertebrae import qc as vertebra_qc

ID_COLUMNS = ("participant_id", "session_id", "image", "source_suffix")
LONG_COLUMNS = (
    *ID_COLUMNS,
    "index",
    "abbreviation",
    "structure",
    "measure",
    "value",
    "units",
    "na_reason",
)
QC_COLUMNS = (
    *ID_COLUMNS,
    "source",
    "qc_status",
    "status",
    "reason",
    "correction",
    "correction_refused",
    "app_version",
    "model_release",
    "device",
    "runtime_s",
    "voxel_size_mm",
    "shape",
    "orientation",
    "levels_present",
    "top_level",
    "bottom_level",
    "n_labels",
    *(f"flag_{f}" for f in (*IMAGE_FLAGS, *GROUP_FLAGS)),
    "flag_reasons",
    "outlier_measures",
    "qc_rating",
    "qc_problems",
    "qc_comment",
)
ID_DESCRIPTIONS = {
    "participant_id": {"Description": "Participant label with its sub- prefix."},
    "session_id": {"Description": "Session label with its ses- prefix, n/a without sessions."},
    "image": {"Description": "Source file name without extension (the status stamp's name)."},
    "source_suffix": {"Description": "BIDS suffix of the source image (T1w, T2w...)."},
}
# (measure, title, structures shown), one strip plot each.
PLOTS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("volume_mm3", "Vertebral volume", frozenset({"vertebra", "sacrum"})),
    ("volume_mm3", "Disc volume", frozenset({"disc"})),
    ("volume_mm3", "Cord and canal volume", frozenset({"cord", "canal"})),
    ("disc_height_mm", "Disc height", frozenset({"disc"})),
    ("disc_ap_depth_mm", "Disc antero-posterior depth", frozenset({"disc"})),
    ("body_height_mm", "Vertebral body height", frozenset({"vertebra"})),
    ("canal_csa_mm2", "Canal cross-sectional area", frozenset({"vertebra", "disc"})),
    (
        "cord_csa_mm2",
        "Cord cross-sectional area (not validated)",
        frozenset({"vertebra", "disc"}),
    ),
    ("canal_ap_mm", "Canal antero-posterior diameter", frozenset({"vertebra", "disc"})),
    (
        "canal_ap_ratio",
        "Canal AP compression ratio (disc / adjacent vertebrae)",
        frozenset({"disc"}),
    ),
    ("canal_csa_ratio", "Canal area compression ratio", frozenset({"disc"})),
    (
        "cord_ap_lr_ratio",
        "Cord AP / left-right ratio (not validated)",
        frozenset({"vertebra", "disc"}),
    ),
)
# Alignment angles: one value per image, from qc.json.
ANGLES: tuple[Column, ...] = (
    *(
        Column(
            name,
            title,
            "Sagittal angle between two endplates (vertebra-disc interfaces) in scanner mm; "
            "see the documentation, QC and ratings (Alignment).",
            "deg",
        )
        for name, title in TITLES.items()
    ),
    Column(
        "coronal_cobb_deg",
        "Coronal Cobb estimate",
        "Largest coronal tilt difference between two thoracic or lumbar vertebrae.",
        "deg",
    ),
)
ANGLE_BY_NAME: dict[str, Column] = {c.name: c for c in ANGLES}
OUTLIER_DESCRIPTION = (
    "Cohort-relative: 1 when a measurement of the image lies outside the Tukey fences "
    "(Q1 - k IQR, Q3 + k IQR) of the images in this group run, for measures with at least "
    "tukey_min_n values. It depends on which images are in the run (the same image may be "
    "flagged in one run and not in another), so it is kept apart: it never changes "
    "qc_status, flag_reasons or the work list, which read the image alone."
)
SPINE = "spine"  # abbreviation and structure of the angle rows of the long table
DISPLAY_ORDER = (L.CORD, L.CANAL, *SPINE_ORDER)


def measured(row: Mapping[str, object]) -> Iterator[tuple[int, str, float]]:
    """(position in MEASURE_COLUMNS, measure, value) of each finite measure of a TSV row."""
    for i, m in enumerate(MEASURE_COLUMNS):
        value = number(row.get(m))
        if math.isfinite(value):
            yield i, m, value


def _ids(rec: ImageRecord) -> dict[str, object]:
    return {
        "participant_id": f"sub-{rec.subject}",
        "session_id": f"ses-{rec.session}" if rec.session else NA,
        "image": rec.key,
        "source_suffix": rec.suffix,
    }


def measure_key(abbreviation: str, measure: str) -> str:
    return f"{abbreviation}_{measure}"


def level_measures() -> tuple[Column, ...]:
    """Every per-level measure of the group tables: the morphometry table's, then the
    vertebral-body table's (heights, ratios, grades, slips) and their n/a reasons."""
    return (
        *(COLUMN_BY_NAME[m] for m in MEASURE_COLUMNS),
        *vertebra_qc.measures(),
        *vertebra_qc.REASONS,
    )


def body_rows(rec: ImageRecord, bodies: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Long rows of an image's vertebral-body measures: every measure of every level of its
    table, n/a ones with their reason (a grade or shape is text in `value`)."""
    return [
        {
            **_ids(rec),
            "index": v.index,
            "abbreviation": v.level,
            "structure": v.structure,
            "measure": v.measure.name,
            "value": v.value,
            "units": v.measure.units,
            "na_reason": v.na_reason,
        }
        for v in vertebra_qc.level_values(bodies)
    ]


def long_rows(
    records: Sequence[ImageRecord], bodies: Mapping[str, Sequence[Mapping[str, object]]]
) -> list[dict[str, object]]:
    """One row per image x label x measure with a value, one per alignment angle, and one per
    image x level x vertebral-body measure (`bodies`: each image's vertebral-body rows)."""
    rows = []
    for rec in records:
        for row in rec.morphometry:
            for _, m, value in measured(row):
                rows.append(
                    {
                        **_ids(rec),
                        "index": row.get("index"),
                        "abbreviation": row.get("abbreviation"),
                        "structure": row.get("structure"),
                        "measure": m,
                        "value": value,
                        "units": COLUMN_BY_NAME[m].units,
                    }
                )
        for name, value in angle_values(rec).items():
            rows.append(
                {
                    **_ids(rec),
                    "abbreviation": SPINE,
                    "structure": SPINE,
                    "measure": name,
                    "value": value,
                    "units": "deg",
                }
            )
        rows += body_rows(rec, bodies.get(rec.key, []))
    return rows


def judged_values(rec: ImageRecord) -> dict[str, float]:
    """The measurements of an image that Tukey fences may judge.

    Volumes of labels cut by the field of view (cord and canal nearly always) measure the
    coverage, not the anatomy, so they are left out; lengths cut by the border are n/a already.
    """
    return {
        measure_key(str(r["abbreviation"]), m): value
        for r in rec.morphometry
        for _, m, value in measured(r)
        if not (m == "volume_mm3" and r.get("fov_edge") == 1)
    } | angle_values(rec)


def angle_values(rec: ImageRecord) -> dict[str, float]:
    """The image's measured alignment angles (qc.json), keyed as ANGLES."""
    data = rec.qc.get("alignment") or {}
    cobb = data.get("coronal_cobb")
    values = {
        **{name: data.get(name) for name in TITLES},
        "coronal_cobb_deg": cobb.get("angle_deg") if isinstance(cobb, Mapping) else None,
    }
    return {k: number(v) for k, v in values.items() if math.isfinite(number(v))}


def _label_rank(label: object) -> int:
    return DISPLAY_ORDER.index(label) if label in DISPLAY_ORDER else len(DISPLAY_ORDER)


def wide_columns() -> list[str]:
    """The wide table's columns, the same for every cohort: the ids, every alignment angle,
    then, for each label of the label table (spine order), each measure that applies to its
    kind (`Column.structures`). A level or angle no image has is a column of n/a, so a
    script reading the table works on every study."""
    labels = sorted(L.FINAL_LABELS, key=lambda lab: _label_rank(lab.index))
    return [
        *ID_COLUMNS,
        *(c.name for c in ANGLES),
        *(
            measure_key(lab.abbreviation, col.name)
            for lab in labels
            for col in level_measures()
            if lab.kind in col.structures
        ),
    ]


def wide_table(
    records: Sequence[ImageRecord], bodies: Mapping[str, Sequence[Mapping[str, object]]]
) -> tuple[list[str], list[dict[str, object]]]:
    """(columns, rows): `wide_columns()` and one row per image with morphometry, its
    vertebral-body measures (`bodies`: each image's rows) and why they are n/a."""
    rows = []
    for rec in records:
        if not rec.morphometry:
            continue
        row: dict[str, object] = {**_ids(rec), **angle_values(rec)}
        for r in rec.morphometry:
            for _, m, value in measured(r):
                row[measure_key(str(r["abbreviation"]), m)] = value
        values = list(vertebra_qc.level_values(bodies.get(rec.key, [])))
        for v in values:
            row[measure_key(v.level, v.measure.name)] = v.value
        for (level, column), why in vertebra_qc.level_reasons(values).items():
            row[measure_key(level, column)] = why
        rows.append(row)
    return wide_columns(), rows


def wide_sidecar(columns: Sequence[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {k: dict(v) for k, v in ID_DESCRIPTIONS.items()}
    by_name = {c.name: c for c in level_measures()}
    for col in columns[len(ID_COLUMNS) :]:
        abbr, _, m = col.partition("_")
        meta = ANGLE_BY_NAME.get(col) or by_name[m]
        long_name = meta.long_name if col in ANGLE_BY_NAME else f"{abbr} {meta.long_name.lower()}"
        out[col] = {"LongName": long_name, "Description": meta.description}
        if meta.units:
            out[col]["Units"] = meta.units
        if m in vertebra_qc.LEVELS:
            out[col]["Levels"] = vertebra_qc.LEVELS[m]
    return out


def long_sidecar() -> dict[str, Mapping[str, object]]:
    return {
        **ID_DESCRIPTIONS,
        "index": {"Description": "Label value (seg-spine_dseg.tsv)."},
        "abbreviation": {"Description": "Level name."},
        "structure": {
            "Description": "cord, canal, vertebra, sacrum or disc; 'spine' for the alignment "
            "angles (one per image, index n/a)."
        },
        "measure": {
            "Description": "Measurement name; see the per-image *_morphometry.json.",
            "Levels": {
                **{m: COLUMN_BY_NAME[m].description for m in MEASURE_COLUMNS},
                **{c.name: f"{c.long_name}. {c.description}" for c in ANGLES},
                **{c.name: c.description for c in vertebra_qc.measures()},
            },
        },
        "value": {
            "Description": "Measured value, in `units`. Vertebral-body grades and shapes are "
            "text (genant_grade 0-3; deformity_shape normal, wedge, biconcave, crush; "
            "meyerding_grade none, I-V); n/a with the reason in na_reason."
        },
        "units": {"Description": "Units of `value`."},
        "na_reason": {
            "Description": "Why `value` is n/a (vertebral-body measures, which have a row per "
            "level even when n/a: C1, C2, transitional, thick slices, not seen whole...); n/a "
            "when measured. The other measures have a row only when measured."
        },
    }


def raised_flags(rec: ImageRecord) -> dict[str, str]:
    """Flag id -> reason for the image's own flags: what its qc_status is made of."""
    return {f["id"]: f["reason"] for f in rec.flags}


def outlier_flag(outliers: list[tuple[str, float, float, float]]) -> dict[str, str]:
    """The cohort-relative measure_outlier flag (id -> reason), empty when not raised. It
    depends on which images are in this group run, so it never changes qc_status."""
    if not outliers:
        return {}
    return {
        "measure_outlier": "outside this group's Tukey fences (does not change qc_status): "
        + ", ".join(m for m, *_ in outliers)
    }


def qc_row(
    rec: ImageRecord, outliers: list[tuple[str, float, float, float]], rating: Rating | None
) -> dict[str, object]:
    st, qc = rec.stamp, rec.qc
    geo = qc.get("geometry") or {}
    # labels_present holds the labels that count (fragments left out, qc.plausibility.counted)
    present = [x for x in SPINE_ORDER if x in (qc.get("labels_present") or [])]
    raised = raised_flags(rec)
    total = (st.get("timings") or {}).get("total")
    row = {
        **_ids(rec),
        "source": rec.source,
        "qc_status": rec.qc_status(list(raised)),
        "status": rec.status,
        "reason": rec.reason,
        "correction": st.get("manual"),
        "correction_refused": rec.refused.get("reason"),
        "app_version": st.get("app_version") or qc.get("app_version"),
        "model_release": (st.get("model") or {}).get("release"),
        "device": st.get("device"),
        "runtime_s": number(total),
        "voxel_size_mm": "x".join(f"{v:g}" for v in geo.get("voxel_size_mm") or []) or None,
        "shape": "x".join(str(v) for v in geo.get("shape") or []) or None,
        "orientation": geo.get("orientation"),
        "levels_present": qc.get("levels") or None,
        "top_level": L.level_name(present[0]) if present else None,
        "bottom_level": L.level_name(present[-1]) if present else None,
        "n_labels": qc.get("n_labels"),
        "flag_reasons": "; ".join(f"{k}: {v}" for k, v in raised.items()) or None,
        "outlier_measures": "; ".join(f"{m}={v:.4g}" for m, v, *_ in outliers) or None,
        **(rating.columns() if rating else {}),
    }
    for f in IMAGE_FLAGS:
        row[f"flag_{f}"] = int(f in raised) if qc else None
    for f in GROUP_FLAGS:
        row[f"flag_{f}"] = int(bool(outliers)) if qc else None
    return row


def qc_sidecar(th: Thresholds) -> dict[str, object]:
    out: dict[str, object] = dict(ID_DESCRIPTIONS)
    out.update(
        {
            "source": {"Description": "BIDS-relative path of the source image."},
            "qc_status": {
                "Description": "QC verdict from the run status and the flags; any flag except "
                "thick_slices makes it 'check' at least.",
                "Levels": QC_STATUSES,
            },
            "status": {
                "Description": "Participant-level outcome.",
                "Levels": {
                    "ok": "all outputs written",
                    "partial": "some outputs written; see reason",
                    "failed": "no segmentation; see reason",
                    "incomplete": "QC files without a status stamp (run interrupted)",
                    "missing": "participant selected but no output found, or outputs the "
                    "status stamp lists were deleted since the participant run",
                },
            },
            "reason": {"Description": "One-line reason for a non-ok status."},
            "correction": {
                "Description": "Manual correction the outputs were made from (the stamp's "
                "automatic_flags keep the automatic result's flags); n/a without.",
                "Levels": {
                    "corrected segmentation": "final labels taken from a manual file",
                    "disc points": "levels numbered from manual disc points",
                },
            },
            "app_version": {"Description": "SpineSeg version that made the outputs."},
            "model_release": {"Description": "Weights release of the spine networks."},
            "device": {"Description": "Device the networks ran on (cpu, cuda:N)."},
            "correction_refused": {
                "Description": "Why the image's newest correction file was refused (one "
                "line naming the file); its outputs and status are those of before. n/a "
                "without a refused correction. A refusal makes qc_status 'check' and puts "
                "the image on the work list."
            },
            "runtime_s": {
                "Description": "Wall time of the image at participant level.",
                "Units": "s",
            },
            "voxel_size_mm": {"Description": "Voxel size of the source image.", "Units": "mm"},
            "shape": {"Description": "Voxel grid of the source image (i x j x k)."},
            "orientation": {"Description": "Axis codes of the source image (e.g. RAS, PSR)."},
            "levels_present": {"Description": "Range of vertebrae and discs found."},
            "top_level": {"Description": "Most superior structure found (level name)."},
            "bottom_level": {"Description": "Most inferior structure found (level name)."},
            "n_labels": {"Description": "Number of distinct final labels present."},
            "flag_reasons": {"Description": "Raised flags with their one-line reasons, '; '."},
            "outlier_measures": {
                "Description": "Measures outside the group's Tukey fences, as measure=value."
            },
            "qc_rating": {
                "Description": "Manual rating saved from the subject report (read from the "
                "ratings folder); n/a when not rated.",
                "Levels": RATINGS,
            },
            "qc_problems": {
                "Description": "Problems ticked in the subject report, comma-separated.",
                "Levels": PROBLEMS,
            },
            "qc_comment": {"Description": "Reviewer's comment from the subject report."},
        }
    )
    for f in (*IMAGE_FLAGS, *GROUP_FLAGS):
        out[f"flag_{f}"] = {"Description": FLAG_DESCRIPTIONS[f], "Levels": {"0": "no", "1": "yes"}}
    out["flag_measure_outlier"] = {
        "Description": OUTLIER_DESCRIPTION,
        "Levels": {"0": "no", "1": "yes"},
    }
    out["outlier_measures"] = {
        "Description": "The measures of flag_measure_outlier with their values, "
        "'measure=value; ...' (cohort-relative, as that flag)."
    }
    out["Thresholds"] = th.as_dict()
    return out


def _missing(
    root: Path, records: Sequence[ImageRecord], participants: Sequence[str] | None
) -> list[str]:
    """Selected (or present) participants without any image record."""
    wanted = (
        set(participants)
        if participants
        else {p.name[4:] for p in root.glob("sub-*") if p.is_dir()}
    )
    return sorted(wanted - {r.subject for r in records})


def outputs_gone(root: Path, stamp: Mapping[str, object]) -> str | None:
    """Why a stamped image's results are no longer there (None: every listed output is)."""
    gone = missing_outputs(root, stamp)
    if not gone:
        return None
    listed = len(stamp.get("outputs") or [])  # type: ignore[arg-type]
    return (
        f"{len(gone)} of the {listed} outputs its status stamp lists are gone (e.g. {gone[0]}); "
        "run the participant level again"
    )


def plots(
    records: Sequence[ImageRecord],
    outliers: dict[str, list[tuple[str, float, float, float]]],
    th: Thresholds,
) -> list:
    """One SVG strip plot per entry of PLOTS that has values."""
    names = {lab.index: lab.abbreviation for lab in L.FINAL_LABELS}
    judged = {rec.key: judged_values(rec) for rec in records}
    out = []
    for measure, title, kinds in PLOTS:
        points: list[Point] = []
        per_cat: dict[int, list[float]] = {}
        shown: set[int] = set()
        units = COLUMN_BY_NAME[measure].units or ""
        for rec in records:
            flagged = {m for m, *_ in outliers.get(rec.key, [])}
            for row in rec.morphometry:
                value, index = number(row.get(measure)), number(row.get("index"))
                if row.get("structure") not in kinds or not math.isfinite(value + index):
                    continue
                cat = int(index)
                key = measure_key(str(row["abbreviation"]), measure)
                if key in judged[rec.key]:
                    per_cat.setdefault(cat, []).append(value)
                shown.add(cat)
                points.append(
                    Point(
                        category=cat,
                        value=value,
                        href=f"sub-{rec.subject}.html#{rec.key}",
                        tooltip=f"{rec.key} {row['abbreviation']}: {value:.4g} {units}".strip(),
                        outlier=key in flagged,
                        key=rec.key,
                    )
                )
        if not points:
            continue
        cats = [(c, names[c]) for c in DISPLAY_ORDER if c in shown]
        out.append(strip_plot(title, units, cats, points, _fences(per_cat, th)))
    alignment = alignment_plot(records, outliers, th)
    return [*out, alignment] if alignment is not None else out


def alignment_plot(
    records: Sequence[ImageRecord],
    outliers: dict[str, list[tuple[str, float, float, float]]],
    th: Thresholds,
) -> Markup | None:
    """One strip plot of the alignment angles (a column per angle), None when none measured."""
    points: list[Point] = []
    per_cat: dict[int, list[float]] = {}
    for rec in records:
        flagged = {m for m, *_ in outliers.get(rec.key, [])}
        for name, value in angle_values(rec).items():
            cat = [c.name for c in ANGLES].index(name)
            per_cat.setdefault(cat, []).append(value)
            points.append(
                Point(
                    category=cat,
                    value=value,
                    href=f"sub-{rec.subject}.html#{rec.key}",
                    tooltip=f"{rec.key} {ANGLE_BY_NAME[name].long_name}: {value:.1f} deg",
                    outlier=name in flagged,
                    key=rec.key,
                )
            )
    if not points:
        return None
    cats = [(i, c.long_name.split(" (")[0]) for i, c in enumerate(ANGLES)]
    return strip_plot("Alignment angles", "deg", cats, points, _fences(per_cat, th))


def _fences(per_cat: dict[int, list[float]], th: Thresholds) -> dict[int, tuple[float, float]]:
    """Tukey fences of the categories with enough images for them to mean something."""
    return {c: tukey_fences(v, th.tukey_k) for c, v in per_cat.items() if len(v) >= th.tukey_min_n}


def _display_row(root: Path, row: dict[str, object], raised: dict[str, str]) -> dict[str, object]:
    """A group_qc row for the page, with its subject report link (when written) and flags."""
    report = f"{row['participant_id']}.html"
    return {
        **{c: row.get(c) for c in (*QC_COLUMNS, *lesion_qc.COLUMNS)},
        "report": report if (root / report).is_file() else None,
        "raised": [{"id": k, "reason": v} for k, v in raised.items()],
    }


def run_group(
    output_dir: Path,
    participants: list[str] | None = None,
    sessions: list[str] | None = None,
    ratings_dir: Path | None = None,
) -> Path:
    """Write the group tables (TSV + JSON) and `group.html`; returns the page's path.

    Manual ratings are read from `ratings_dir` (default `output_dir/ratings`).
    """
    root = Path(output_dir)
    ratings = read_ratings(ratings_dir if ratings_dir is not None else root / RATINGS_DIR)
    participants = [p.removeprefix("sub-") for p in participants] if participants else None
    sessions = [s.removeprefix("ses-") for s in sessions] if sessions else None
    th = Thresholds()
    records = collect(root, participants, sessions)

    outliers = group_outliers({rec.key: judged_values(rec) for rec in records}, th)

    tables = {rec.key: vertebra_qc.read_levels(root, rec.stamp) for rec in records}
    bodies = {key: rows or [] for key, rows in tables.items()}
    write_text_atomic(
        root / "group_morphometry_long.tsv", tsv_text(LONG_COLUMNS, long_rows(records, bodies))
    )
    write_json_atomic(root / "group_morphometry_long.json", long_sidecar())
    wide_cols, wide_rows = wide_table(records, bodies)
    write_text_atomic(root / "group_morphometry_wide.tsv", tsv_text(wide_cols, wide_rows))
    write_json_atomic(root / "group_morphometry_wide.json", wide_sidecar(wide_cols))

    missing = _missing(root, records, participants)
    qc_rows = [qc_row(r, outliers.get(r.key, []), ratings.get(r.key)) for r in records]
    flags = [raised_flags(r) for r in records] + [{} for _ in missing]
    lesions = [lesion_qc.lesion_columns(root, r.stamp) for r in records]
    body_flags = [vertebra_qc.vertebra_columns(tables[r.key]) for r in records]
    for rec, row, raised, (cols, reasons), (body_cols, body_reasons) in zip(
        records, qc_rows, flags, lesions, body_flags, strict=False
    ):
        raised.update(reasons | body_reasons)  # lesion and body flags count like the image's own
        if rec.refused:
            raised["correction_refused"] = str(rec.refused.get("reason"))
        row.update(cols | body_cols, qc_status=rec.qc_status(list(raised)))
        row["flag_reasons"] = "; ".join(f"{k}: {v}" for k, v in raised.items()) or None
        if reason := outputs_gone(root, rec.stamp):
            row.update(status=MISSING, reason=reason, qc_status="fail")
    with_lesions = any(cols for cols, _ in lesions)
    # Fixed columns, whatever the cohort holds (n/a where an image has no lesion or body run).
    qc_columns = (*QC_COLUMNS, *lesion_qc.COLUMNS, *vertebra_qc.COLUMNS)
    qc_rows += [
        {
            "participant_id": f"sub-{s}",
            "qc_status": "fail",
            "status": MISSING,
            "reason": "no participant-level output found",
        }
        for s in missing
    ]
    write_text_atomic(root / "group_qc.tsv", tsv_text(qc_columns, qc_rows))
    write_json_atomic(
        root / "group_qc.json",
        qc_sidecar(th) | lesion_qc.sidecar() | vertebra_qc.sidecar(),
    )
    # A possible fracture or listhesis lists the image by itself, with its levels and grades.
    write_worklist(root, qc_rows, flags, listing=vertebra_qc.FLAGS)

    counts: dict[str, int] = {}
    for r in qc_rows:
        counts[str(r["qc_status"])] = counts.get(str(r["qc_status"]), 0) + 1
    thumbs = []
    for rec in records:
        fig = figure(root, (rec.qc.get("figures") or {}).get("sagittal"), rec.key)
        if fig:
            thumbs.append({**fig, "href": f"sub-{rec.subject}.html#{rec.key}"})
    html = (
        environment()
        .get_template("group.html.j2")
        .render(
            rows=[
                _display_row(
                    root, row, raised | outlier_flag(outliers.get(str(row.get("image")), []))
                )
                for row, raised in zip(qc_rows, flags, strict=True)
            ],
            counts=counts,
            with_lesions=with_lesions,
            missing=missing,
            plots=plots(records, outliers, th),
            thumbs=thumbs,
            thresholds=th,
            n_images=len(records),
            ratings_dir=ratings_dir if ratings_dir is not None else f"{RATINGS_DIR}/",
            n_rated=sum(r.key in ratings for r in records),
            participants=participants,
            sessions=sessions,
            cord_warning=CORD_CSA_WARNING,
            app_version=__version__,
            generated=now(),
        )
    )
    page = root / "group.html"
    write_text_atomic(page, html)
    return page
