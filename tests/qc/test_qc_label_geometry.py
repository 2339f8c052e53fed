"""LabelGeometry's per-label work in each label's box gives what whole-image passes gave.

Components and the canal centreline are found inside the labels' boxes (find_objects) to
save the QC passes over the whole image; these tests hold them to the whole-image results,
bit for bit, on grids of every kind and on labels broken into pieces.
"""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np
import pytest
from qc_helpers import reorient

from bids_app.plumbing import labels as L
from bids_app.qc.geometry import SUPERIOR, LabelGeometry, fit_centreline, to_world, voxel_extent


def _components_whole_image(geom: LabelGeometry) -> dict[int, list[int]]:
    cc, n = cc3d.connected_components(geom.data, connectivity=26, return_N=True)
    label_of = np.zeros(n + 1, np.int64)
    label_of[cc.ravel()] = geom.data.ravel()
    sizes = np.bincount(cc.ravel(), minlength=n + 1)
    out: dict[int, list[int]] = {}
    for comp in np.argsort(-sizes[1:], kind="stable") + 1:
        out.setdefault(int(label_of[comp]), []).append(int(sizes[comp]))
    return out


def _centreline_whole_image(geom: LabelGeometry):
    cc = cc3d.connected_components(np.isin(geom.data, (L.CORD, L.CANAL)), connectivity=26)
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max())
    world = to_world(geom.affine, np.argwhere(np.isin(cc, keep)).astype(float))
    return fit_centreline(world, max(5.0, 1.5 * voxel_extent(geom.affine, SUPERIOR)))


def _broken(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Labels cut into pieces: a slab of every third vertebra and the canal erased, specks of
    disc and cord elsewhere, and a label at the border of the grid."""
    data = np.asarray(img.dataobj).copy()
    for label in (*list(L.VERTEBRAE)[::3], L.CANAL):
        idx = np.argwhere(data == label)
        if len(idx):
            mid = np.median(idx[:, 2]).astype(int)
            data[..., mid : mid + 2][data[..., mid : mid + 2] == label] = 0
    rng = np.random.default_rng(0)
    for label in (L.CORD, 100, 92):
        for ijk in rng.integers(0, data.shape, size=(5, 3)):
            data[tuple(ijk)] = label
    data[0, 0, :3] = L.CORD
    return nib.Nifti1Image(data, img.affine)


@pytest.mark.parametrize("grid", ["whole", "whole_broken", "oblique", "sag3", "pir"])
def test_box_results_equal_the_whole_image_ones(grid, whole, cervical_sag3, cervical_oblique):
    img = {
        "whole": whole.labels,
        "whole_broken": _broken(whole.labels),
        "oblique": cervical_oblique.labels,
        "sag3": cervical_sag3.labels,
        "pir": reorient(whole.labels, "PIR"),
    }[grid]
    geom = LabelGeometry.from_image(img)
    assert geom.component_sizes == _components_whole_image(geom)
    if grid == "whole_broken":
        assert sum(len(s) > 1 for s in geom.component_sizes.values()) >= 5
    got, want = geom.centreline, _centreline_whole_image(geom)
    assert got is not None and want is not None
    assert np.array_equal(got.points, want.points)
    assert np.array_equal(got.tangents, want.tangents)


def test_no_canal_no_centreline(whole):
    data = np.asarray(whole.labels.dataobj).copy()
    data[np.isin(data, (L.CORD, L.CANAL))] = 0
    assert LabelGeometry.from_image(nib.Nifti1Image(data, whole.labels.affine)).centreline is None
