"""Morphometry against phantoms whose true dimensions are known."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import bids_source, canal_radii, reorient, true_length

from bids_app.plumbing import labels as L
from bids_app.qc import measures
from bids_app.qc.geometry import LabelGeometry, anterior_frame, load_nifti, unit, voxel_extent
from bids_app.qc.image import write_image_qc
from bids_app.qc.records import read_tsv

PHANTOMS = ["cervical", "cervical_sag3", "cervical_ax4", "cervical_oblique", "lumbar"]


def _rows(img: nib.Nifti1Image) -> tuple[LabelGeometry, dict[int, dict]]:
    geom = LabelGeometry.from_image(img)
    return geom, {r["index"]: r for r in measures.measure(geom)}


@pytest.fixture(scope="module")
def measured(request):
    cache = {}

    def get(name):
        if name not in cache:
            phantom = request.getfixturevalue(name)
            cache[name] = (phantom, *_rows(phantom.labels))
        return cache[name]

    return get


@pytest.mark.parametrize("name", PHANTOMS)
def test_disc_height_and_depth_within_one_voxel(measured, name):
    phantom, geom, rows = measured(name)
    segs = {s.label: s for s in phantom.anatomy.segments}
    checked = 0
    for label, row in rows.items():
        if label not in L.DISCS or geom.touches_edge(label):
            continue
        axis = geom.disc_axis(label)
        centre = geom.centroid(label)
        truth = true_length(phantom.anatomy, segs[label], centre, axis)
        assert abs(row["disc_height_mm"] - truth) <= voxel_extent(geom.affine, axis), (
            f"{name} {L.level_name(label)}: height {row['disc_height_mm']:.2f} vs {truth:.2f}"
        )
        ant = anterior_frame(axis)[0]
        assert abs(row["disc_ap_depth_mm"] - segs[label].depth) <= voxel_extent(geom.affine, ant), (
            f"{name} {L.level_name(label)}: depth {row['disc_ap_depth_mm']:.2f} "
            f"vs {segs[label].depth:.2f}"
        )
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", PHANTOMS)
def test_body_height_within_one_voxel(measured, name):
    phantom, geom, rows = measured(name)
    segs = {s.label: s for s in phantom.anatomy.segments}
    checked = 0
    for label, row in rows.items():
        above, below = geom.neighbours(label)
        if row["structure"] != "vertebra" or above not in L.DISCS or below not in L.DISCS:
            assert math.isnan(row["body_height_mm"])
            continue
        if math.isnan(row["body_height_mm"]):  # allowed only where the image cuts the body
            assert geom.touches_edge(label), f"{name} {L.level_name(label)}: no body height"
            continue
        top, bot = geom.centroid(above), geom.centroid(below)
        axis = unit(top - bot)
        truth = true_length(phantom.anatomy, segs[label], (top + bot) / 2, axis)
        assert abs(row["body_height_mm"] - truth) <= voxel_extent(geom.affine, axis), (
            f"{name} {L.level_name(label)}: body {row['body_height_mm']:.2f} vs {truth:.2f}"
        )
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    ("name", "canal_tol", "cord_tol"),
    [
        ("cervical", 0.06, 0.10),
        ("cervical_sag3", 0.08, 0.15),
        ("cervical_ax4", 0.08, 0.15),
        ("cervical_oblique", 0.06, 0.10),
        ("lumbar", 0.06, 0.10),
    ],
)
def test_cross_sections_match_ellipses(measured, name, canal_tol, cord_tol):
    """Canal (cord included) and cord CSA vs pi * r_ap * r_lr of the phantom at that level."""
    phantom, _, rows = measured(name)
    segs = {s.label: s for s in phantom.anatomy.segments}
    canal_err, cord_err, zero_cord = [], [], 0
    for label, row in rows.items():
        if label not in L.DISCS or math.isnan(row["canal_csa_mm2"]):
            continue
        seg = segs[label]
        cra, crl, kra, krl = canal_radii(phantom.anatomy, (seg.s_top + seg.s_bot) / 2)
        canal_err.append(row["canal_csa_mm2"] / (math.pi * cra * crl) - 1)
        if kra > 0:
            cord_err.append(row["cord_csa_mm2"] / (math.pi * kra * krl) - 1)
        elif seg.s_top > phantom.anatomy.cord_end_s + 5:
            assert row["cord_csa_mm2"] == 0.0
            zero_cord += 1
    assert len(canal_err) >= 5
    assert np.median(np.abs(canal_err)) < canal_tol and np.max(np.abs(canal_err)) < 2 * canal_tol
    assert np.median(np.abs(cord_err)) < cord_tol and np.max(np.abs(cord_err)) < 2 * cord_tol
    if name == "lumbar":  # the cord ends near L1: no cord at the lower lumbar discs
        assert zero_cord >= 3


def test_disc_volume_is_area_times_height(measured):
    """Elliptic-cylinder discs: volume / (pi/4 depth width) gives back the measured height."""
    phantom, geom, rows = measured("cervical")
    segs = {s.label: s for s in phantom.anatomy.segments}
    for label, row in rows.items():
        if label in L.DISCS and not geom.touches_edge(label):
            seg = segs[label]
            thickness = row["volume_mm3"] / (math.pi / 4 * seg.depth * seg.width)
            assert thickness == pytest.approx(row["disc_height_mm"], rel=0.12)


def test_measures_do_not_depend_on_voxel_order(cervical, measured):
    _, _, ref = measured("cervical")
    for axcodes in ("LPI", "PSR", "ILA"):
        _, rows = _rows(reorient(cervical.labels, axcodes))
        assert rows.keys() == ref.keys()
        for label, row in rows.items():
            for col in measures.MEASURE_COLUMNS:
                a, b = row[col], ref[label][col]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=0.3), (
                    f"{axcodes} {L.level_name(label)} {col}: {a} vs {b}"
                )


def test_fov_cut_disc_gets_no_height(cervical):
    """A disc cut by the top of the image keeps its volume but loses its height."""
    geom = LabelGeometry.from_image(cervical.labels)
    disc = 65  # C4-C5
    zs = geom.voxel_indices(disc)[:, 2]
    cut = int(np.median(zs))
    data = np.asanyarray(cervical.labels.dataobj)[:, :, :cut]  # RAS: keep below the disc middle
    cropped = nib.Nifti1Image(data, cervical.labels.affine)
    _, rows = _rows(cropped)
    assert rows[disc]["fov_edge"] == 1
    assert math.isnan(rows[disc]["disc_height_mm"])
    assert rows[disc]["volume_mm3"] > 0
    below = rows[66]  # C5-C6, whole
    assert below["fov_edge"] == 0 and below["disc_height_mm"] > 3


def test_morphometry_files(tmp_path, cervical):
    summary = write_image_qc(
        cervical.image,
        cervical.labels,
        None,
        output_dir=tmp_path,
        source=bids_source("sub-01_ses-02_acq-sag"),
        suffix="T2w",
        landmarks=["C2-C3"],
    )
    tsv = tmp_path / "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_seg-spine_desc-T2w_morphometry.tsv"
    assert summary["morphometry"] == tsv.relative_to(tmp_path).as_posix()
    header = tsv.read_text().splitlines()[0].split("\t")
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    assert header == list(measures.COLUMN_NAMES) and set(sidecar) == set(header)
    for col in measures.MEASURE_COLUMNS:
        if col.endswith("_ratio"):
            assert "Units" not in sidecar[col] and "divided by" in sidecar[col]["Description"]
        else:
            assert sidecar[col]["Units"] in ("mm", "mm^2", "mm^3")
    assert "NOT VALIDATED" in sidecar["cord_csa_mm2"]["Description"]
    rows = {r["abbreviation"]: r for r in read_tsv(tsv)}
    assert rows["SC"]["disc_height_mm"] != rows["SC"]["disc_height_mm"]  # n/a reads back as NaN
    assert "\tn/a\t" in tsv.read_text()
    counts = np.bincount(np.asanyarray(cervical.labels.dataobj).ravel())
    for r in rows.values():
        assert r["voxels"] == counts[r["index"]]
        assert r["volume_mm3"] == pytest.approx(counts[r["index"]] * 1.0, abs=0.01)


def test_non_nifti_label_file_is_refused_with_its_name(tmp_path, cervical):
    """An image format other than NIfTI gives a one-line error naming the file."""
    path = tmp_path / "labels.mgz"
    nib.save(nib.MGHImage(np.asarray(cervical.labels.dataobj), cervical.labels.affine), path)
    with pytest.raises(ValueError, match=r"labels\.mgz: not a NIfTI image"):
        load_nifti(path)
    nib.save(cervical.labels, tmp_path / "labels.nii.gz")
    assert isinstance(load_nifti(tmp_path / "labels.nii.gz"), nib.Nifti1Image)


def test_tsv_cells_read_as_numbers():
    assert measures.number(3) == 3.0 and measures.number(2.5) == 2.5
    assert all(math.isnan(measures.number(v)) for v in ("n/a", "C5", None, True))
