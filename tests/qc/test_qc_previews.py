"""Previews show the same anatomy the same way whatever the voxel order, size or obliquity."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from qc_helpers import bids_source, reorient

from bids_app.plumbing import labels as L
from bids_app.qc.image import write_image_qc
from bids_app.qc.previews import MIN_TAG_LUMINANCE, PX_PER_MM, luminance, tag_colour

COMMON = (160, 400)  # width, height the views are compared at


def _write(tmp_path, phantom_image, phantom_labels, name: str, levels=None, final=True) -> dict:
    return write_image_qc(
        phantom_image,
        phantom_labels if final else None,
        levels,
        output_dir=tmp_path,
        source=bids_source(f"sub-01_acq-{name}"),
        suffix="T2w",
        landmarks=["C2-C3"],
        missing_reason="step-1-only run",
    )


def _open(tmp_path, rel: str) -> tuple[Image.Image, list[dict], tuple, dict]:
    im = Image.open(tmp_path / rel)
    im.load()
    meta = {k: json.loads(v) for k, v in im.text.items() if k.startswith("spineseg:")}
    return (
        im.convert("RGB"),
        meta["spineseg:tags"],
        tuple(meta["spineseg:image_box"]),
        meta.get("spineseg:world", {}),
    )


def _coloured(view: np.ndarray) -> np.ndarray:
    """Pixels carrying a label colour (grey pixels have R == G == B)."""
    v = view.astype(int)
    return (v[..., 0] != v[..., 1]) | (v[..., 1] != v[..., 2])


def _exact(view: np.ndarray, colour) -> np.ndarray:
    return np.all(view.astype(int) == np.array(colour), axis=-1)


def _world_crop(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both views cropped to the world region they share, resized to one common size."""
    boxes = []
    for _, _, box, w in (a, b):
        d = w["mm_per_pixel"]
        top, ant = w["top_z_mm"], w["anterior_y_mm"]
        boxes.append((top, top - (box[3] - box[1]) * d, ant, ant - (box[2] - box[0]) * d))
    top = min(x[0] for x in boxes)
    bottom = max(x[1] for x in boxes)
    ant = min(x[2] for x in boxes)
    post = max(x[3] for x in boxes)
    out = []
    for im, _, box, w in (a, b):
        d = w["mm_per_pixel"]
        x0 = box[0] + (w["anterior_y_mm"] - ant) / d
        y0 = box[1] + (w["top_z_mm"] - top) / d
        region = (x0, y0, x0 + (ant - post) / d, y0 + (top - bottom) / d)
        crop = im.resize(COMMON, Image.Resampling.NEAREST, box=region)
        out.append(np.asarray(crop))
    return out[0], out[1]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _centre_mm(view, box, world, label) -> np.ndarray:
    """World (z, y) mm of the centre of a label's opaque contour pixels in the view."""
    rows_cols = np.argwhere(_exact(np.asarray(view.crop(box)), L.label_colour(label))) + 0.5
    d = world["mm_per_pixel"]
    r, c = rows_cols.mean(0)
    return np.array([world["top_z_mm"] - r * d, world["anterior_y_mm"] - c * d])


@pytest.fixture(scope="module")
def views(tmp_path_factory, cervical, cervical_oblique, cervical_sag3):
    """Sagittal previews of one spine seen through several grids."""
    out = tmp_path_factory.mktemp("previews")
    cases = {
        "RAS": (cervical.image, cervical.labels),
        "LPI": (reorient(cervical.image, "LPI"), reorient(cervical.labels, "LPI")),
        "PSR": (reorient(cervical.image, "PSR"), reorient(cervical.labels, "PSR")),
        "oblique": (cervical_oblique.image, cervical_oblique.labels),
        "sag3": (cervical_sag3.image, cervical_sag3.labels),
    }
    result = {}
    for name, (img, lab) in cases.items():
        summary = _write(out, img, lab, name)
        result[name] = (out, summary, _open(out, summary["figures"]["sagittal"]))
    return result


@pytest.mark.parametrize(
    ("name", "min_dice"),
    [("LPI", 0.98), ("PSR", 0.98), ("oblique", 0.9), ("sag3", 0.9)],
)
def test_same_picture_in_every_orientation(views, name, min_dice):
    ref, other = views["RAS"][2], views[name][2]
    a, b = _world_crop(ref, other)
    dice = _dice(_coloured(a), _coloured(b))
    print(f"{name}: colour-layer Dice vs RAS {dice:.3f}")
    assert dice > min_dice, f"{name}: colour layer Dice {dice:.3f}"
    names = {t["name"] for t in other[1]}
    ref_names = {t["name"] for t in ref[1]}
    assert len(names & ref_names) >= 14 and names >= ref_names - {"C1", "T2"}


@pytest.mark.parametrize("name", ["RAS", "LPI", "PSR", "oblique", "sag3"])
def test_superior_up_anterior_left_true_scale(views, name):
    im, tags, box, world = views[name][2]
    # Tags go down the spine in anatomical order on each side.
    for side, expected in (("left", ["C2-C3", "C3-C4", "C4-C5"]), ("right", ["C2", "C3", "C4"])):
        ys = {t["name"]: t["y"] for t in tags if t["side"] == side}
        assert [ys[n] for n in expected] == sorted(ys[n] for n in expected)
    # Discs lie in front of the cord: on its left. C2-C3 is above C7-T1.
    cord = _centre_mm(im, box, world, L.CORD)
    c23, c7t1 = (_centre_mm(im, box, world, d) for d in (63, 71))
    assert c23[1] > cord[1] and c23[0] > c7t1[0]
    # Square pixels at the true scale: distances in mm agree with the RAS view.
    r_im, _, r_box, r_world = views["RAS"][2]
    r_c23, r_c7t1 = (_centre_mm(r_im, r_box, r_world, d) for d in (63, 71))
    r_cord = _centre_mm(r_im, r_box, r_world, L.CORD)
    assert np.linalg.norm(c23 - c7t1) == pytest.approx(np.linalg.norm(r_c23 - r_c7t1), abs=2.0)
    assert c23[1] - cord[1] == pytest.approx(r_c23[1] - r_cord[1], abs=2.0)


def test_level_tags_drawn_in_label_colours(views, cervical):
    """Each tag is drawn in its label's hue, lightened to read on black (anti-aliased)."""
    im, tags, box, _ = views["RAS"][2]
    present = set(np.unique(np.asanyarray(cervical.labels.dataobj)).tolist())
    canvas = np.asarray(im).astype(float)
    for tag in tags:
        label = next(i for i in present if i in L.LABEL_BY_ID and L.level_name(i) == tag["name"])
        x0, x1 = (0, box[0]) if tag["side"] == "left" else (box[2], im.width)
        text = canvas[tag["y"] : tag["y"] + 13, x0:x1].reshape(-1, 3)
        text = text[text.max(1) > 60]
        colour = np.array(tag_colour(label), float)
        hue = colorsys.rgb_to_hsv(*(colour / 255))[0]
        assert hue == pytest.approx(colorsys.rgb_to_hsv(*L.label_colour(label))[0], abs=0.02)
        assert luminance(tag["colour"]) >= MIN_TAG_LUMINANCE
        cos = text @ colour / (np.linalg.norm(text, axis=1) * np.linalg.norm(colour))
        assert (cos > 0.995).sum() > 15, f"tag {tag['name']} not drawn in its colour"
    discs = {L.level_name(i) for i in present if i in L.DISCS}
    assert discs <= {t["name"] for t in tags if t["side"] == "left"}


def test_axial_strip_one_tile_per_disc_anterior_up(views, cervical):
    out, summary, _ = views["RAS"]
    im, tags, _, _ = _open(out, summary["figures"]["axial"])
    present = set(np.unique(np.asanyarray(cervical.labels.dataobj)).tolist())
    assert [t["name"] for t in tags] == [L.level_name(i) for i in sorted(present & set(L.DISCS))]
    tile = 200
    for t in tags:
        label = next(i for i in L.DISCS if L.level_name(i) == t["name"])
        view = np.asarray(im.crop((t["x"], t["y"], t["x"] + tile, t["y"] + tile)))
        disc = np.argwhere(_exact(view, L.label_colour(label)))
        cord = np.argwhere(_exact(view, L.label_colour(L.CORD)))
        assert disc[:, 0].mean() < cord[:, 0].mean(), f"{t['name']}: disc not anterior (up)"


def test_markers_name_levels_without_final_labels(tmp_path, cervical):
    """Step-1-only runs have level markers but no final labels: the markers are tagged."""
    from bids_app.qc.geometry import LabelGeometry

    geom = LabelGeometry.from_image(cervical.labels)
    marks = np.zeros(cervical.labels.shape, np.uint8)
    order = [63, 64, 65, 66, 67, 71]
    for value, disc in enumerate(order, start=3):
        ijk = geom.voxel_indices(disc)
        marks[tuple(ijk[len(ijk) // 2])] = value
    levels = nib.Nifti1Image(marks, cervical.labels.affine)
    summary = _write(tmp_path, cervical.image, cervical.labels, "mark", levels=levels, final=False)
    _, tags, _, _ = _open(tmp_path, summary["figures"]["sagittal"])
    assert [t["name"] for t in tags] == ["C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1"]
    assert summary["figures"]["axial"] is None
    assert summary["flags"] == [{"id": "no_segmentation", "reason": "step-1-only run"}]


REAL = Path("/work/shared/data/TPTBox")


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real-data folder not available")
def test_real_scan_in_pir_orientation(tmp_path):
    """A real T2w stored PIR at 1.5 mm with reference masks in TotalSpineSeg ids (C5-C7)."""
    img = nib.load(REAL / "TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz")
    lab = nib.load(REAL / "derived/sub-mri_label-6_tss-style_dseg.nii.gz")
    summary = _write(tmp_path, img, lab, "real")
    im, tags, box, world = _open(tmp_path, summary["figures"]["sagittal"])
    assert {t["name"] for t in tags} == {"C5", "C6", "C7", "C5-C6", "C6-C7"}
    canal = _centre_mm(im, box, world, L.CANAL)
    c56, c67 = (_centre_mm(im, box, world, d) for d in (66, 67))
    assert c56[1] > canal[1] and c56[0] > c67[0]  # disc anterior (left), C5-C6 above C6-C7
    strip_tags = _open(tmp_path, summary["figures"]["axial"])[1]
    assert [t["name"] for t in strip_tags] == ["C5-C6", "C6-C7"]


def test_partial_image_overlays_its_step1_labels(tmp_path, cervical):
    """A step-1-only image shows cord, canal and discs from seg-step1, and only one flag."""
    data = np.asanyarray(cervical.labels.dataobj)
    step1 = np.where(np.isin(data, [*range(12, 33), L.SACRUM]), L.SACRUM, data)
    anat = tmp_path / "sub-01/anat"
    anat.mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(step1.astype(np.uint8), cervical.labels.affine),
        anat / "sub-01_acq-part_seg-step1_desc-T2w_dseg.nii.gz",
    )
    summary = write_image_qc(
        cervical.image,
        None,
        None,
        output_dir=tmp_path,
        source=bids_source("sub-01_acq-part"),
        suffix="T2w",
        landmarks=[],
        missing_reason="step-1-only run",
    )
    assert summary["flags"] == [{"id": "no_segmentation", "reason": "step-1-only run"}]
    im, tags, box, _ = _open(tmp_path, summary["figures"]["sagittal"])
    view = np.asarray(im)[box[1] : box[3], box[0] : box[2]]
    assert _exact(view, L.label_colour(L.CORD)).sum() > 100  # cord contour drawn
    names = {t["name"] for t in tags}
    assert {"C2-C3", "C7-T1", "C1"} <= names and "S" not in names
    qc = json.loads((anat / "sub-01_acq-part_seg-spine_desc-T2w_qc.json").read_text())
    assert "step-1 labels" in qc["previews_note"]


def test_preview_height_follows_the_field_of_view(tmp_path, cervical, lumbar, whole):
    """Taller fields of view get taller previews (they were all about 420 px)."""
    views = {}
    for name, ph in (("cerv", cervical), ("lumbar", lumbar), ("whole", whole)):
        summary = _write(tmp_path, ph.image, ph.labels, name)
        _, _, box, world = _open(tmp_path, summary["figures"]["sagittal"])
        views[name] = (box[3] - box[1], world["mm_per_pixel"])
    assert views["cerv"][0] < views["lumbar"][0] < views["whole"][0]
    assert views["lumbar"][1] == pytest.approx(1 / PX_PER_MM)  # 2 px per mm
    assert views["whole"][0] >= 1150


def test_every_tag_colour_reads_on_black():
    """Dark blue labels were unreadable on the black margin (contrast 4.5:1 or more)."""
    for label in L.LABEL_BY_ID:
        contrast = (luminance(tag_colour(label)) + 0.05) / 0.05
        assert contrast >= 4.5, L.level_name(label)
