"""Phantoms are the ground truth of every other test: check they are exact and consistent."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from bids_app.phantom.anatomy import random_anatomy
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.phantom.targets import step1_target, step2_target
from bids_app.plumbing import labels as L


@pytest.fixture(scope="module")
def cervical():
    return render_phantom(11, Acquisition(fov="cervical", lr_extent=40.0, contrast="T2w"))


def _centroids_world(ph) -> dict[int, np.ndarray]:
    lab = np.asarray(ph.labels.dataobj)
    ids = [int(i) for i in np.unique(lab) if i]
    coms = ndimage.center_of_mass(np.ones_like(lab), lab, ids)
    aff = ph.labels.affine
    return {i: aff[:3, :3] @ np.array(c) + aff[:3, 3] for i, c in zip(ids, coms, strict=True)}


def _touching_border(ph) -> set[int]:
    lab = np.asarray(ph.labels.dataobj)
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
    return {int(v) for face in faces for v in np.unique(face)} - {0}


def test_same_seed_same_phantom() -> None:
    a = render_phantom(5, Acquisition(fov="lumbar", lr_extent=40.0))
    b = render_phantom(5, Acquisition(fov="lumbar", lr_extent=40.0))
    c = render_phantom(6, Acquisition(fov="lumbar", lr_extent=40.0))
    assert np.array_equal(a.image.get_fdata(), b.image.get_fdata())
    assert np.array_equal(np.asarray(a.labels.dataobj), np.asarray(b.labels.dataobj))
    assert np.allclose(a.image.affine, b.image.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(
        np.asarray(a.labels.dataobj), np.asarray(c.labels.dataobj)
    )


def test_labels_come_from_the_final_table_only(cervical) -> None:
    present = {int(i) for i in np.unique(np.asarray(cervical.labels.dataobj))} - {0}
    assert present <= L.FINAL_IDS
    # A cervical field of view shows C1-C7, the discs C2-C3..C7-T1, cord and canal.
    assert {1, 2, 11, 12, 13, 14, 15, 16, 17, 63, 64, 65, 66, 67, 71} <= present


def test_every_disc_lies_between_its_two_vertebrae() -> None:
    ph = render_phantom(12, Acquisition(fov="whole", lr_extent=40.0))
    com = _centroids_world(ph)
    checked = 0
    for disc, below in L.VERTEBRA_BELOW_DISC.items():
        above = {63: 12, 71: 17, 91: 32, 100: 45}.get(disc, below - 1)
        if disc in com and below in com and above in com:
            assert com[above][2] > com[disc][2] > com[below][2], L.DISCS[disc]
            checked += 1
    assert checked >= 22


def test_cord_inside_canal(cervical) -> None:
    lab = np.asarray(cervical.labels.dataobj)
    cord = lab == L.CORD
    # Every neighbour of the cord is cord or canal, away from the image border.
    shell = ndimage.binary_dilation(cord) & ~cord
    shell[:, :, [0, -1]] = False
    shell[:, [0, -1], :] = False
    shell[[0, -1], :, :] = False
    assert cord.sum() > 1000
    assert np.mean(lab[shell] == L.CANAL) > 0.99


def test_t2w_and_t1w_contrasts() -> None:
    t2 = render_phantom(13, Acquisition(fov="cervical", lr_extent=40.0, contrast="T2w"))
    t1 = render_phantom(13, Acquisition(fov="cervical", lr_extent=40.0, contrast="T1w"))
    lab = np.asarray(t2.labels.dataobj)
    for ph, csf_brighter in ((t2, True), (t1, False)):
        img = ph.image.get_fdata()
        csf, cord = np.median(img[lab == L.CANAL]), np.median(img[lab == L.CORD])
        assert (csf > 1.3 * cord) == csf_brighter


@pytest.mark.parametrize(
    "acq",
    [
        Acquisition(fov="cervical", lr_extent=40.0, axcodes="LPI"),
        Acquisition(fov="cervical", lr_extent=40.0, axcodes="PSR"),
        Acquisition(fov="cervical", lr_extent=40.0, oblique_deg=(8.0, -5.0, 10.0)),
        Acquisition(fov="cervical", lr_extent=40.0, voxel="sag3", axcodes="PSR"),
        Acquisition(fov="cervical", lr_extent=40.0, voxel="ax4", axcodes="LAS"),
    ],
)
def test_acquisitions_share_anatomy_in_world_space(cervical, acq) -> None:
    other = render_phantom(11, acq)
    ref, got = _centroids_world(cervical), _centroids_world(other)
    assert set(ref) == set(got)
    thick = max(np.sqrt((other.labels.affine[:3, :3] ** 2).sum(0)))
    # Structures cut by the field of view (cord, canal, the last vertebra) are cut
    # differently by grids of other extents: compare only those fully inside both. A thick
    # slice samples thin lateral processes coarsely, hence one voxel of tolerance.
    for lab in set(ref) - _touching_border(cervical) - _touching_border(other):
        assert np.linalg.norm(ref[lab] - got[lab]) < max(1.0, thick), L.level_name(lab)


def test_lumbar_variants() -> None:
    four = np.unique(
        np.asarray(
            render_phantom(14, Acquisition(fov="lumbar", lr_extent=40.0), n_lumbar=4).labels.dataobj
        )
    )
    six = np.unique(
        np.asarray(
            render_phantom(14, Acquisition(fov="lumbar", lr_extent=40.0), n_lumbar=6).labels.dataobj
        )
    )
    assert 44 in four and 45 not in four and 100 in four
    assert {45, 46, 96, 100} <= set(six.tolist())


def test_training_targets(cervical) -> None:
    final = np.asarray(cervical.labels.dataobj)
    s1 = step1_target(final)
    assert set(np.unique(s1).tolist()) == {0, 1, 2, 3, 6, 7, 8, 9}  # C2-C3 and C7-T1 visible
    assert np.array_equal(s1 == 7, final == 11)
    a, ch_a = step2_target(final, start=0)
    b, ch_b = step2_target(final, start=1)
    discs = np.isin(final, list(L.DISCS))
    assert not np.any(ch_a & ch_b) and np.array_equal((ch_a | ch_b) > 0, discs)
    assert ch_a[final == 63].all()  # first present disc starts parity 0
    # Odd/even vertebra classes swap with the parity; the vertebra below a marked disc is 7.
    assert np.array_equal(a == 7, b == 8) and np.array_equal(a == 8, b == 7)
    for disc, below in L.VERTEBRA_BELOW_DISC.items():
        if (final == disc).any() and (final == below).any():
            marked = bool(ch_a[final == disc].all())
            assert np.all(a[final == below] == (7 if marked else 8))
    assert np.array_equal(a == 10, final == L.CANAL) and np.array_equal(a == 11, final == L.CORD)


def test_narrowing_shrinks_only_the_canal_at_its_disc() -> None:
    acq = Acquisition(fov="cervical", lr_extent=40.0)
    even = render_phantom(11, acq)
    narrow = render_phantom(11, acq, narrowing={"C5-C6": 0.5})
    anat = narrow.anatomy
    seg = anat.segment(66)
    assert anat.ap_factor((seg.s_top + seg.s_bot) / 2) == pytest.approx(0.5)
    assert anat.ap_factor(anat.segment(14).s_top) == 1.0  # a vertebra away from it
    assert narrow.meta["narrowing"] == {"C5-C6": 0.5}
    a, b = np.asarray(even.labels.dataobj), np.asarray(narrow.labels.dataobj)
    discs = list(L.DISCS)
    assert np.array_equal(np.isin(a, discs) * a, np.isin(b, discs) * b)  # discs stay put
    assert (b == L.CANAL).sum() + (b == L.CORD).sum() < (a == L.CANAL).sum() + (a == L.CORD).sum()


@pytest.mark.parametrize(
    ("narrowing", "message"),
    [({"C5-C7": 0.5}, "no disc 'C5-C7'"), ({"L5-L6": 0.5}, "no disc"), ({"C5-C6": 0.0}, "(0, 1]")],
)
def test_bad_narrowing_is_refused(narrowing, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        random_anatomy(11, n_lumbar=5, narrowing=narrowing)
