"""Issue 29: a level holding a small lesion shows a non-zero lesion load in its table."""

from __future__ import annotations

import csv
import io

import numpy as np

from bids_app.lesions.measures import LOAD_COLUMNS, measure_lesions
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.plumbing import labels as L
from bids_app.qc.records import tsv_text


def test_two_cubic_millimetres_of_lesion_do_not_round_to_zero_load():
    ph = render_phantom(22, Acquisition(fov="cervical", lr_extent=40.0))
    spine = np.asarray(ph.labels.dataobj)
    cord = np.argwhere(spine == L.CORD)
    middle = cord[np.argsort(np.abs(cord[:, 2] - np.median(cord[:, 2])))[:2]]  # 2 cord voxels
    lesion = np.zeros(spine.shape, np.uint8)
    lesion[tuple(middle.T)] = 1
    load = measure_lesions(lesion, spine, ph.image.affine).load
    text = tsv_text(list(LOAD_COLUMNS), load)
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    with_lesion = [r for r in rows if float(r["lesion_volume_mm3"]) > 0]
    assert with_lesion and sum(float(r["lesion_volume_mm3"]) for r in with_lesion) <= 2.5
    for row in with_lesion:
        value = float(row["lesion_load"])
        assert value > 0, row  # "0.00" before: two decimals of a 0.002 share
        expected = float(row["lesion_volume_mm3"]) / float(row["cord_volume_mm3"])
        assert abs(value - expected) / expected < 0.01
