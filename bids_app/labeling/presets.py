"""The reference tool's two labeling calls (docs/method.md §1.4 steps 12 and 22.9)."""

from __future__ import annotations

import numpy as np

from bids_app.labeling.iterative import LabelingOutput, iterative_label
from bids_app.plumbing.labels import (
    CANAL,
    CORD,
    DISC_CLASSES,
    LANDMARK_DISCS,
    SACRUM,
    STEP1_C1,
    STEP1_CANAL,
    STEP1_CORD,
    STEP1_OTHER_BONE,
    STEP2_CANAL,
    STEP2_CORD,
    STEP2_SACRUM,
    STEP2_VERTEBRA_EXTRA,
    STEP2_VERTEBRAE,
)

LANDMARK_CLASSES = tuple(LANDMARK_DISCS)  # 2, 3, 4, 5
LANDMARK_OUTPUTS = tuple(LANDMARK_DISCS.values())  # 63, 71, 91, 100
# Landmarks tried without a localizer: C2-C3 and L5-S, then C7-T1, then T12-L1.
OWN_LANDMARKS = (2, 5, 3, 4)
# With a localizer only C2-C3 and L5-S are a fallback.
LOCALIZER_FALLBACK = (2, 5)
C1 = 11


def label_step1(
    seg: np.ndarray, loc: np.ndarray | None = None, top_disc: int | None = None
) -> LabelingOutput:
    """Label a step-1 raw map (§4.1) into discs, cord, canal, C1 and 50 for other bone.

    `seg` and `loc` are on the same 1 mm RAS grid; the labels come back on it. `top_disc`
    (off by default, as in the reference) numbers the discs from the most superior one when
    no landmark is found.
    """
    return iterative_label(
        seg,
        disc_labels=DISC_CLASSES,
        disc_landmark_labels=LANDMARK_CLASSES,
        disc_landmark_output_labels=LANDMARK_OUTPUTS,
        selected_disc_landmarks=OWN_LANDMARKS if loc is None else LOCALIZER_FALLBACK,
        canal_labels=STEP1_CANAL,
        canal_output_label=CANAL,
        cord_labels=STEP1_CORD,
        cord_output_label=CORD,
        sacrum_labels=STEP1_OTHER_BONE,
        sacrum_output_label=SACRUM,
        map_input_dict=dict.fromkeys(STEP1_C1, C1),
        loc=loc,
        default_superior_disc=top_disc,
    )


def label_step2(
    seg: np.ndarray, loc: np.ndarray | None = None, top_disc: int | None = None
) -> LabelingOutput:
    """Label a step-2 raw map (§4.2) into the final labels (§4.5).

    `seg` and `loc` are on the same 1 mm RAS grid (the step-2 crop); the labels come back on it.
    """
    return iterative_label(
        seg,
        disc_labels=DISC_CLASSES,
        disc_landmark_labels=LANDMARK_CLASSES,
        disc_landmark_output_labels=LANDMARK_OUTPUTS,
        selected_disc_landmarks=OWN_LANDMARKS if loc is None else LOCALIZER_FALLBACK,
        vertebrae_labels=STEP2_VERTEBRAE,
        vertebrae_landmark_output_labels=(13, 21, 41, SACRUM),
        vertebrae_extra_labels=STEP2_VERTEBRA_EXTRA,
        canal_labels=STEP2_CANAL,
        canal_output_label=CANAL,
        cord_labels=STEP2_CORD,
        cord_output_label=CORD,
        sacrum_labels=STEP2_SACRUM,
        sacrum_output_label=SACRUM,
        loc=loc,
        default_superior_disc=top_disc,
    )
