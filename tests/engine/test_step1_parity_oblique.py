"""Issue 29: step-1 outputs of an oblique 1 mm image come back to its grid from the 1 mm
grid's affine as the reference's step-1 files carry it (nnU-Net's SimpleITK export).

The golden affine was read from the reference tool's own step-1 output
(totalspineseg==20260807, `benchmarks/compare_reference` case
phantom:5103:lumbar:iso1:RAS:T2w:oblique=8,0,5); with it the step-1 labels, markers and
soft maps matched the reference's voxel for voxel, with the float32 affine 5,751 labels did
not (every input voxel lies halfway between two 1 mm voxels there: nearest neighbour ties).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_app.engine import geometry as geo

INPUT_AFFINE = [
    [0.9961947202682495, -0.08630754798650742, 0.012129735201597214, -30.907711029052734],
    [0.08715574443340302, 0.9864997863769531, -0.13864350318908691, -66.63455963134766],
    [0.0, 0.13917310535907745, 0.9902680516242981, -817.296142578125],
]
REFERENCE_STEP1_AFFINE = [
    [0.9961947202682495, -0.08630755543708801, 0.012129735201597214, -30.944799423217773],
    [0.08715574443340302, 0.9864997863769531, -0.1386435180902481, -66.21063232421875],
    [5.45538170193538e-10, 0.13917312026023865, 0.9902681112289429, -816.7314453125],
]


def _oblique_input() -> nib.Nifti1Image:
    affine = np.vstack([np.array(INPUT_AFFINE), [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros((76, 192, 391), np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def test_the_step1_affine_is_the_references_bit_for_bit():
    got = geo.exported_affine(geo.to_canonical(_oblique_input()))
    assert np.array_equal(got[:3], np.array(REFERENCE_STEP1_AFFINE))


def test_the_float32_affine_differs_in_the_last_bits_that_decide_ties():
    """Why it matters: the 1 mm grid is one voxel shorter and half a voxel off, so the
    plain float32 affine puts input voxels on the other side of a tie."""
    shape, aff = geo.iso_grid(geo.to_canonical(_oblique_input()))
    assert shape == (76, 191, 390)
    diff = np.abs(aff.astype(np.float32)[:3] - np.array(REFERENCE_STEP1_AFFINE))
    assert 0 < diff[:, :3].max() < 1e-7
