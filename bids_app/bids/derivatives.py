"""Write the BIDS-Derivatives dataset: root files, per-image outputs and their sidecars.

Naming follows docs/bids-conventions.md §2.7: the source file's entities are kept, derivative
entities are appended in BIDS order (`seg` before `res`, `label` after `res`, `desc` last) and
the source suffix becomes `desc-<suffix>`, so T1w- and T2w-derived files of one session never
collide. Root files are shared by parallel participant runs and go through `write_shared`.
Knows nothing of networks: it receives images in memory and provenance as plain data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import nibabel as nib

from bids_app import __version__
from bids_app.bids.stamps import source_stem
from bids_app.plumbing.atomic import json_text, save_nifti_atomic, write_json_atomic, write_shared
from bids_app.plumbing.labels import (
    CANAL,
    CORD,
    DISCS,
    FINAL_LABELS,
    FIRST_DISC_LEVEL,
    LEVEL_DISCS,
    VERTEBRAE,
    label_hex,
)

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.1"
LOGS_DIR = Path("logs")
# Derivative entities in the order of the BIDS schema (rules/entities.yaml); raw entities all
# come before these, so appending them to the source prefix keeps the whole name ordered.
DERIVATIVE_ENTITY_ORDER = ("space", "atlas", "seg", "scale", "res", "den", "label", "desc")
BIDSIGNORE = (
    "*.html",
    "figures",
    "*_morphometry.tsv",
    "*_morphometry.json",
    "*_qc.json",
    "group_*",
    "ratings",  # the subject reports' rating files (default --ratings-dir)
)
ISO_RESOLUTION = "1 mm isotropic resampling of the source image on the RAS model grid"
_DOI_RE = re.compile(r"^(?:doi:|https?://doi\.org/)?(10\.\d+/\S+)$", re.IGNORECASE)


@dataclass(frozen=True)
class OutputSpec:
    """One kind of image output: which EngineResult key, how it is named and described."""

    key: str
    suffix: str
    entities: tuple[tuple[str, str], ...]
    description: str
    steps: tuple[int, ...]  # which networks it depends on (1 = step 1, 2 = step 2)


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec(
        "final",
        "dseg",
        (("seg", "spine"),),
        "Instance segmentation of the spine: spinal cord, spinal canal, each vertebra "
        "(C1-L5, sacrum) and each intervertebral disc (C2-C3 to L5-S), TotalSpineSeg method; "
        "label values in seg-spine_dseg.tsv.",
        (1, 2),
    ),
    OutputSpec(
        "step1",
        "dseg",
        (("seg", "step1"),),
        "Step-1 segmentation of the TotalSpineSeg method: cord, canal, C1, all other vertebrae "
        "and the sacrum as one label (50), labelled discs; label values in seg-step1_dseg.tsv.",
        (1,),
    ),
    OutputSpec(
        "levels",
        "dseg",
        (("seg", "discmarkers"),),
        "Single-voxel level markers at the posterior tip of each intervertebral disc (and C1, "
        "C1-C2); values in seg-discmarkers_dseg.tsv, numbered consecutively over the discs found.",
        (1,),
    ),
    OutputSpec(
        "cord_soft",
        "probseg",
        (("label", "cord"),),
        "Soft segmentation (probability 0-1) of the spinal cord from step 1.",
        (1,),
    ),
    OutputSpec(
        "canal_soft",
        "probseg",
        (("label", "canal"),),
        "Soft segmentation (probability 0-1) of the spinal canal, cord included, from step 1.",
        (1,),
    ),
)


# Outputs a manual correction changes (the soft maps are the network's either way), and how
# a sidecar names each kind.
CORRECTED_OUTPUTS = frozenset({"final", "step1", "levels"})
MANUAL_WHAT = {
    "seg": "corrected final segmentation, taken as it is",
    "discs": "disc points that numbered the levels",
}


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of the networks: release name, Dataset folder names, file hashes."""

    release: str
    steps: tuple[str, str]
    sha256: Mapping[str, str]

    @classmethod
    def from_weights(cls, weights) -> ModelInfo:
        """From a `bids_app.nnunet.weights.WeightSet` (duck-typed: no network import here)."""
        names = (Path(weights.step1).name, Path(weights.step2).name)
        return cls(weights.release, names, dict(sorted(weights.sha256.items())))

    def stamp(self) -> dict:
        return {"release": self.release, "sha256": dict(self.sha256)}


# ---------------------------------------------------------------------------------------------
# Names


def entity_name(prefix: str, suffix: str, ext: str = ".nii.gz", **entities: str | None) -> str:
    """`<prefix>_<derivative entities in BIDS order>_<suffix><ext>`; None values are dropped."""
    unknown = set(entities) - set(DERIVATIVE_ENTITY_ORDER)
    if unknown:
        raise ValueError(f"not a derivative entity: {', '.join(sorted(unknown))}")
    parts = [prefix] + [f"{k}-{entities[k]}" for k in DERIVATIVE_ENTITY_ORDER if entities.get(k)]
    return "_".join(parts) + f"_{suffix}{ext}"


def bids_prefix(source_name: str, suffix: str) -> str:
    """Source file name without its suffix and extension ("sub-01_ses-01_acq-sag")."""
    stem = source_stem(source_name)
    return stem.removesuffix(f"_{suffix}")


def output_name(prefix: str, spec: OutputSpec, *, desc: str | None, iso: bool) -> str:
    return entity_name(
        prefix, spec.suffix, **dict(spec.entities), res="1mm" if iso else None, desc=desc
    )


def image_output_paths(relpath: str, suffix: str, *, iso: bool) -> dict[tuple[str, bool], str]:
    """(result key, is_iso) -> output path relative to output_dir, for one BIDS source image."""
    src = PurePosixPath(relpath)
    prefix = bids_prefix(src.name, suffix)
    out = {}
    for spec in OUTPUTS:
        for on_iso in (False, True) if iso else (False,):
            name = output_name(prefix, spec, desc=suffix, iso=on_iso)
            out[(spec.key, on_iso)] = (src.parent / name).as_posix()
    return out


# QC files of an image: (name suffix, extension). Tables sit beside the image's NIfTI outputs,
# in the source's own folder; figures in the subject's `figures/` folder (.bidsignore'd).
QC_TABLES = {"morphometry": ("morphometry", ".tsv"), "morphometry_json": ("morphometry", ".json")}
QC_TABLES["qc"] = ("qc", ".json")
QC_FIGURES = ("sagittal", "axial", "curvature")


def qc_output_paths(relpath: str, suffix: str) -> dict[str, str]:
    """Kind -> output-relative path of each QC file of one BIDS source image."""
    src = PurePosixPath(relpath)
    prefix = bids_prefix(src.name, suffix)
    out = {
        kind: (src.parent / entity_name(prefix, name, ext, seg="spine", desc=suffix)).as_posix()
        for kind, (name, ext) in QC_TABLES.items()
    }
    for kind in QC_FIGURES:
        name = entity_name(prefix, kind, ".png", seg="spine", desc=suffix)
        out[kind] = f"{src.parts[0]}/figures/{name}"
    return out


def final_output_relpath(relpath: str, suffix: str) -> str:
    """Where the final labels of a source image are written (used for localizers)."""
    return image_output_paths(relpath, suffix, iso=False)[("final", False)]


def run_log_path(output_dir: Path, when: datetime | None = None) -> Path:
    """`logs/spineseg-<UTC time>-<pid>.log`: unique per run, even for parallel runs."""
    when = when or datetime.now(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    return Path(output_dir) / LOGS_DIR / f"spineseg-{stamp}-{os.getpid()}.log"


# ---------------------------------------------------------------------------------------------
# Root files


def _tsv(rows: Sequence[Sequence[object]]) -> bytes:
    return "".join("\t".join(str(c) for c in row) + "\n" for row in rows).encode()


def spine_lut() -> bytes:
    """`seg-spine_dseg.tsv`: one row per final label (index, name, abbreviation, color)."""
    rows: list[tuple[object, ...]] = [("index", "name", "abbreviation", "color")]
    rows += [(lab.index, lab.name, lab.abbreviation, label_hex(lab.index)) for lab in FINAL_LABELS]
    return _tsv(rows)


def step1_lut() -> bytes:
    """`seg-step1_dseg.tsv`: step 1 labels (50 means every vertebra but C1, sacrum included)."""
    rows: list[tuple[object, ...]] = [("index", "name", "abbreviation", "color")]
    rows += [
        (lab.index, lab.name, lab.abbreviation, label_hex(lab.index))
        for lab in FINAL_LABELS
        if lab.index in (CORD, CANAL, min(VERTEBRAE))
    ]
    rows.append((50, "vertebrae_C2_to_sacrum", "VERT", label_hex(50)))
    rows += [
        (lab.index, lab.name, lab.abbreviation, label_hex(lab.index))
        for lab in FINAL_LABELS
        if lab.index in DISCS
    ]
    return _tsv(rows)


def marker_levels() -> dict[int, tuple[str, int]]:
    """Level value -> (level name, label id whose colour it takes), docs/method.md §4.6."""
    c1, c2 = sorted(VERTEBRAE)[:2]
    levels = {1: ("C1", c1), 2: ("C1-C2", c2)}
    for i, disc in enumerate(LEVEL_DISCS):
        levels[FIRST_DISC_LEVEL + i] = (DISCS[disc], disc)
    return levels


def discmarkers_lut() -> bytes:
    """`seg-discmarkers_dseg.tsv` for the level values 1..25."""
    rows: list[tuple[object, ...]] = [("index", "name", "abbreviation", "color")]
    for value, (name, colour_of) in marker_levels().items():
        rows.append((value, "level_" + name.replace("-", "_"), name, label_hex(colour_of)))
    return _tsv(rows)


def container_info(env: Mapping[str, str]) -> dict | None:
    """GeneratedBy.Container from the environment: Apptainer first, then a baked tag.

    See docs/bids-conventions.md §2.7.
    """
    tag = env.get("SPINESEG_CONTAINER_TAG")
    for var, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        if env.get(var):
            info = {"Type": kind, "URI": env[var]}
            return {**info, "Tag": tag} if tag else info
    return {"Type": "docker", "Tag": tag} if tag else None


def _raw_description(bids_dir: Path) -> dict:
    try:
        data = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def raw_link(output_dir: Path, bids_dir: Path) -> str | None:
    """Relative path from output_dir to bids_dir when the output is nested in it, else None.

    Absolute paths are not recorded: inside a container they are meaningless outside it.
    """
    out, raw = Path(output_dir).resolve(), Path(bids_dir).resolve()
    if raw == out or raw not in out.parents:
        return None
    return os.path.relpath(raw, out)


def dataset_description(
    output_dir: Path,
    bids_dir: Path,
    model: ModelInfo,
    *,
    app_version: str = __version__,
    env: Mapping[str, str] = os.environ,
) -> dict:
    """Derivative `dataset_description.json` content; deterministic for one configuration."""
    raw = _raw_description(bids_dir)
    app: dict[str, object] = {
        "Name": "spineseg",
        "Version": app_version,
        "Description": "BIDS App re-implementing the two-step TotalSpineSeg inference.",
    }
    container = container_info(env)
    if container:
        app["Container"] = container
    hashes = ", ".join(f"{k}={v}" for k, v in sorted(model.sha256.items()))
    tss = {
        "Name": "TotalSpineSeg",
        "Version": model.release,
        "CodeURL": "https://github.com/neuropoly/totalspineseg",
        "Description": f"nnU-Net models {model.steps[0]} (step 1) and {model.steps[1]} (step 2); "
        f"SHA-256: {hashes or 'none recorded'}",
    }
    desc: dict = {
        "Name": "SpineSeg: vertebrae, intervertebral discs, spinal cord and canal",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [app, tss],
    }
    source: dict = {}
    doi = _DOI_RE.match(str(raw.get("DatasetDOI", "")).strip())
    if doi:
        source["DOI"] = f"doi:{doi.group(1)}"
    link = raw_link(output_dir, bids_dir)
    if link is not None:
        source["URL"] = "bids:raw:"
    if source:
        desc["SourceDatasets"] = [source]
    if link is not None:
        desc["DatasetLinks"] = {"raw": link}
    desc["HowToAcknowledge"] = (
        "Cite SpineSeg, TotalSpineSeg (Warszawer et al.) and nnU-Net (Isensee et al., 2021)."
    )
    if isinstance(raw.get("License"), str):
        desc["License"] = raw["License"]
    return desc


def readme_text(app_version: str) -> str:
    return f"""# SpineSeg derivatives

Segmentations written by SpineSeg {app_version}, a BIDS App that runs the two-step
TotalSpineSeg method (nnU-Net step 1, landmark labeling, nnU-Net step 2, labeling) and
resamples the results back to each source image's grid (no `space-` entity: scanner space).

Per source image `<entities>_<suffix>.nii.gz` (the suffix becomes `desc-<suffix>`):

| file | content |
|---|---|
| `*_seg-spine_desc-<suffix>_dseg.nii.gz` | final labels (`seg-spine_dseg.tsv`) |
| `*_seg-step1_desc-<suffix>_dseg.nii.gz` | step-1 labels (`seg-step1_dseg.tsv`) |
| `*_seg-discmarkers_desc-<suffix>_dseg.nii.gz` | level markers (`seg-discmarkers_dseg.tsv`) |
| `*_label-cord_desc-<suffix>_probseg.nii.gz` | soft spinal cord |
| `*_label-canal_desc-<suffix>_probseg.nii.gz` | soft spinal canal |
| `*_res-1mm_*` | the same on the 1 mm model grid (`--iso`) |
| `*_morphometry.tsv`, `*_qc.json` | per-level measurements and QC flags |

Every image has a JSON sidecar (sources, model release and hashes, device, warnings).
`logs/` holds one log per run and `logs/status/<source>.json`, the per-image completion
stamp used to resume. `sub-<label>.html` and `group.html` are the QC reports.
"""


def write_dataset_files(
    output_dir: Path,
    bids_dir: Path,
    model: ModelInfo,
    *,
    app_version: str = __version__,
    env: Mapping[str, str] = os.environ,
) -> list[str]:
    """Write the shared root files; returns the names whose content changed."""
    output_dir = Path(output_dir)
    description = dataset_description(output_dir, bids_dir, model, app_version=app_version, env=env)
    _warn_if_other_producer(output_dir / "dataset_description.json", description)
    files = {
        "dataset_description.json": json_text(description).encode(),
        "README.md": readme_text(app_version).encode(),
        ".bidsignore": "".join(f"{p}\n" for p in BIDSIGNORE).encode(),
        "seg-spine_dseg.tsv": spine_lut(),
        "seg-step1_dseg.tsv": step1_lut(),
        "seg-discmarkers_dseg.tsv": discmarkers_lut(),
    }
    (output_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    return [name for name, data in files.items() if write_shared(output_dir / name, data)]


def _warn_if_other_producer(path: Path, new: dict) -> None:
    old = _raw_description(path.parent) if path.is_file() else {}
    if old and old.get("GeneratedBy") != new["GeneratedBy"]:
        before = {g.get("Name"): g.get("Version") for g in old.get("GeneratedBy") or []}
        log.warning(
            "%s: previous output generated by spineseg %s with model %s; updating it "
            "(each image's status stamp decides what is recomputed)",
            path,
            before.get("spineseg"),
            before.get("TotalSpineSeg"),
        )


# ---------------------------------------------------------------------------------------------
# Image outputs


def sidecar(
    spec: OutputSpec,
    *,
    iso: bool,
    sources: Sequence[str],
    spatial_reference: str | None,
    model: ModelInfo,
    result,
    manual: Mapping[str, str] | None = None,
) -> dict:
    """JSON sidecar of one output image (`result` is an `EngineResult`).

    `manual` maps a correction kind ("seg": a corrected final segmentation, "discs": disc
    points) to its BIDS URI: the outputs made from it list it in `Sources` and say so in
    `GeneratedBy`; only the corrected segmentation itself is `Manual`.
    """
    used = dict(manual or {}) if spec.key in CORRECTED_OUTPUTS else {}
    data: dict = {"Description": spec.description, "Sources": [*sources, *used.values()]}
    if spatial_reference:
        data["SpatialReference"] = spatial_reference
    data["Manual"] = spec.key == "final" and "seg" in used
    if used:
        data["GeneratedBy"] = [
            {"Name": "Manual", "Description": f"{MANUAL_WHAT[k]}: {uri}"} for k, uri in used.items()
        ] + [{"Name": "spineseg", "Version": __version__}]
    if iso:
        data["Resolution"] = ISO_RESOLUTION
    data["Model"] = {
        "Name": "TotalSpineSeg",
        "Release": model.release,
        "Steps": [model.steps[s - 1] for s in spec.steps],
        "SHA256": dict(model.sha256),
    }
    data["Device"] = result.device
    data["TestTimeAugmentation"] = False
    data["Landmarks"] = dict(result.landmarks)
    data["Warnings"] = [*result.warnings, *result.errors]
    return data


def write_sidecar(path: Path, meta: Mapping[str, object]) -> Path:
    """The JSON sidecar of an output image or table (same name, `.json`), written atomically."""
    target = path.with_name(source_stem(path.name).removesuffix(".tsv") + ".json")
    write_json_atomic(target, dict(meta))
    return target


def write_outputs(
    out_dir: Path,
    prefix: str,
    result,
    model: ModelInfo,
    *,
    desc: str | None,
    sources: Sequence[str],
    spatial_reference: str | None,
    manual: Mapping[str, str] | None = None,
) -> list[Path]:
    """Save every image of `result` (native and iso) with its sidecar, atomically.

    Images are written exactly as the engine returned them: native ones on the source grid,
    iso ones on the 1 mm model grid. Returns the written paths (images and sidecars).
    """
    written: list[Path] = []
    for on_iso, images in ((False, result.native), (True, result.iso)):
        for spec in OUTPUTS:
            img: nib.Nifti1Image | None = images.get(spec.key)
            if img is None:
                continue
            path = Path(out_dir) / output_name(prefix, spec, desc=desc, iso=on_iso)
            save_nifti_atomic(img, path)
            meta = sidecar(
                spec,
                iso=on_iso,
                sources=sources,
                spatial_reference=spatial_reference,
                model=model,
                result=result,
                manual=manual,
            )
            written += [path, write_sidecar(path, meta)]
    return written


def write_image_outputs(
    output_dir: Path,
    relpath: str,
    suffix: str,
    result,
    model: ModelInfo,
    *,
    localizer_output: str | None = None,
    manual: Mapping[str, str] | None = None,
) -> list[str]:
    """Write the outputs of one BIDS source image; returns paths relative to output_dir.

    `localizer_output` is the derivative (relative to output_dir) whose labels guided this
    image; it is listed in `Sources` as a `bids::` URI (same dataset), per BIDS, since it was a
    direct input. `manual`: the image's corrections (see `sidecar`).
    """
    src = PurePosixPath(relpath)
    raw_uri = f"bids:raw:{relpath}"
    sources = [raw_uri] + ([f"bids::{localizer_output}"] if localizer_output else [])
    written = write_outputs(
        Path(output_dir) / src.parent,
        bids_prefix(src.name, suffix),
        result,
        model,
        desc=suffix,
        sources=sources,
        spatial_reference=raw_uri,
        manual=manual,
    )
    return [p.relative_to(output_dir).as_posix() for p in written]
