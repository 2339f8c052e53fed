"""Per-subject HTML report (`sub-<label>.html`), built only from what participant level wrote.

The page links its previews relatively (`sub-<label>/figures/*.png`, checked to exist) and
loads nothing else: no script, font or style sheet from a file or the network (the ratings
form's script is inline), so it opens on an offline cluster or from a copied output folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import jinja2

from bids_app import __version__
from bids_app.bids.stamps import INCOMPLETE, Status
from bids_app.lesions.preview import report_section as lesion_section
from bids_app.lesions.qc import lesion_columns
from bids_app.plumbing import labels as L
from bids_app.plumbing.atomic import write_text_atomic
from bids_app.qc.alignment import TITLES
from bids_app.qc.measures import COLUMN_BY_NAME
from bids_app.qc.previews import figure
from bids_app.qc.ratings import PROBLEMS, RATINGS, SCHEMA
from bids_app.qc.records import ImageRecord, collect, format_value, landmark_list

CORD_CSA_WARNING = (
    "Cord cross-sectional areas and AP / left-right ratios come from a segmentation that was "
    "not validated for cord morphometry; do not use them as cord measurements."
)
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("abbreviation", "Level"),
    ("volume_mm3", "Volume (mm³)"),
    ("n_components", "Parts"),
    ("disc_height_mm", "Disc height (mm)"),
    ("disc_ap_depth_mm", "Disc AP depth (mm)"),
    ("body_height_mm", "Body height (mm)"),
    ("canal_csa_mm2", "Canal CSA (mm²)"),
    ("cord_csa_mm2", "Cord CSA (mm², not validated)"),
    ("canal_ap_mm", "Canal AP (mm)"),
    ("canal_ap_ratio", "Canal AP ratio"),
    ("canal_csa_ratio", "Canal area ratio"),
    ("cord_ap_lr_ratio", "Cord AP/LR (not validated)"),
    ("fov_edge", "At FOV edge"),
)


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _seconds(timings: Mapping[str, object]) -> str:
    parts = [f"{k} {float(v):.1f} s" for k, v in timings.items() if isinstance(v, (int, float))]
    return ", ".join(parts) or "n/a"


def provenance(rec: ImageRecord, root: Path) -> list[tuple[str, str]]:
    """(field, value) rows from the stamp and the final labels' sidecar."""
    st = rec.stamp
    model = st.get("model") or {}
    side = rec.sidecar(root)
    rows = [
        ("SpineSeg version", st.get("app_version") or rec.qc.get("app_version")),
        ("Model release", model.get("release")),
        (
            "Model SHA-256",
            "; ".join(f"{k}: {str(v)[:12]}…" for k, v in (model.get("sha256") or {}).items()),
        ),
        ("Device", st.get("device") or side.get("Device")),
        ("Test-time augmentation", side.get("TestTimeAugmentation")),
        ("Timings", _seconds(st.get("timings") or {})),
        ("Options", ", ".join(f"{k}={v}" for k, v in (st.get("options") or {}).items())),
        ("Warnings", "; ".join(str(w) for w in st.get("warnings") or [])),
        ("Finished", st.get("finished")),
        ("QC generated", rec.qc.get("generated")),
    ]
    geo = rec.qc.get("geometry") or {}
    if geo:
        size = " x ".join(f"{v:g}" for v in geo.get("voxel_size_mm") or [])
        shape = " x ".join(str(v) for v in geo.get("shape") or [])
        rows.append(("Image grid", f"{shape} voxels of {size} mm, {geo.get('orientation')}"))
    return [(k, str(v)) for k, v in rows if v not in (None, "", [])]


def _table(rec: ImageRecord) -> list[list[str]]:
    return [[format_value(row.get(name)) for name, _ in TABLE_COLUMNS] for row in rec.morphometry]


def alignment_rows(data: Mapping[str, object] | None) -> list[tuple[str, str]]:
    """(angle, value) rows of the report's alignment table; 'n/a' where not measurable."""
    if not data:
        return []
    reasons = data.get("reasons")
    why = reasons if isinstance(reasons, Mapping) else {}

    def na(key: str) -> str:
        return f"n/a ({why[key]})" if why.get(key) else "n/a"

    rows = [
        (title, format_angle(data[key]) if _is_angle(data.get(key)) else na(key))
        for key, title in TITLES.items()
    ]
    cobb = data.get("coronal_cobb")
    if isinstance(cobb, Mapping):
        rows.append(
            (
                "Coronal Cobb estimate",
                f"{format_angle(cobb.get('angle_deg'))} "
                f"({cobb.get('upper_end_vertebra')} to {cobb.get('lower_end_vertebra')})",
            )
        )
    else:
        rows.append(("Coronal Cobb estimate", na("coronal_cobb")))
    if data.get("note"):
        rows.append(("Note", str(data["note"])))
    return rows


def _is_angle(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_angle(value: object) -> str:
    return f"{value:.1f} deg" if _is_angle(value) else "n/a"


def image_context(rec: ImageRecord, root: Path) -> dict:
    # Here, not at the top: bids_app.vertebrae imports bids_app.qc.geometry, whose package
    # imports this module.
    from bids_app.vertebrae.preview import report_section as vertebra_section
    from bids_app.vertebrae.qc import read_levels, vertebra_columns

    # The lesion flags (lesion_outside_cord, lesion_at_fov_edge) and the vertebral-body flags
    # (possible_fracture, listhesis) count like the image's own, as in group_qc.tsv: listed
    # with their reasons, and in the QC status.
    raised = lesion_columns(root, rec.stamp)[1] | vertebra_columns(read_levels(root, rec.stamp))[1]
    capability_flags = [{"id": k, "reason": v} for k, v in raised.items()]

    figs = rec.qc.get("figures") or {}
    figures = [
        figure(
            root,
            figs.get("sagittal"),
            "Sagittal view through the canal. Tags: discs on the left, vertebrae on the right. "
            "White dots: level markers (seg-discmarkers), one at the posterior tip of each disc "
            "found.",
        ),
        figure(root, figs.get("axial"), "Axial tiles at each disc"),
        figure(
            root,
            figs.get("curvature"),
            "Curvature: white line through the disc centroids; coloured lines: the endplates "
            "of each sagittal angle, with its value (the coronal Cobb estimate is not drawn).",
        ),
    ]
    labels = [
        {
            "abbreviation": L.LABEL_BY_ID[i].abbreviation,
            "colour": L.label_hex(i),
        }
        for i in rec.qc.get("labels_present") or []
        if i in L.LABEL_BY_ID
    ]
    return {
        "key": rec.key,
        "session": rec.session,
        "source": rec.source,
        "status": rec.status,
        "qc_status": rec.qc_status([f["id"] for f in capability_flags]),
        "reason": rec.reason,
        "figures": [f for f in figures if f],
        "previews_note": rec.qc.get("previews_note"),
        "flags": rec.flags + capability_flags,
        "alignment": alignment_rows(rec.qc.get("alignment")),
        "has_qc": bool(rec.qc),
        "labels": labels,
        "levels": rec.qc.get("levels"),
        "landmarks": landmark_list(rec.qc.get("landmarks") or rec.stamp.get("landmarks")),
        "table": _table(rec),
        "morphometry": rec.qc.get("morphometry"),
        "provenance": provenance(rec, root),
        "manual": rec.stamp.get("manual"),
        "automatic_flags": rec.stamp.get("automatic_flags") or [],
        "lesions": lesion_section(root, rec.stamp),
        "vertebrae": vertebra_section(root, rec.stamp),
    }


def table_columns() -> list[dict[str, str]]:
    return [
        {
            "header": header,
            "description": COLUMN_BY_NAME[name].description if name in COLUMN_BY_NAME else header,
        }
        for name, header in TABLE_COLUMNS
    ]


def write_subject_report(output_dir: Path, subject: str) -> Path:
    """Write `sub-<subject>.html` from the subject's stamps and QC files; returns its path."""
    root = Path(output_dir)
    subject = subject.removeprefix("sub-")
    records = collect(root, [subject])
    images = [image_context(r, root) for r in records]
    html = (
        environment()
        .get_template("subject.html.j2")
        .render(
            subject=subject,
            images=images,
            failed=[im for im in images if im["status"] in (Status.FAILED, INCOMPLETE)],
            columns=table_columns(),
            cord_warning=CORD_CSA_WARNING,
            ratings=RATINGS,
            problems=PROBLEMS,
            schema=SCHEMA,
            app_version=__version__,
            generated=now(),
        )
    )
    path = root / f"sub-{subject}.html"
    write_text_atomic(path, html)
    return path
