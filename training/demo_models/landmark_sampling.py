"""nnU-Net data loaders that centre most foreground patches on the landmark classes.

The landmark discs (C2-C3, C7-T1, T12-L1, L5-S), C1 and the sacrum are one structure each
per image, so nnU-Net's uniform choice among present classes rarely shows them to the
network. A patch forced onto a class is also moved by a random offset: nnU-Net centres it on
the chosen voxel, and a small network trained that way learns "the landmark sits in the middle
of the patch", a cue that the sliding window at inference does not give (the landmark heads
then fire only when a window happens to be centred on them). Imported only after the nnU-Net
environment variables are set (nnunetv2 reads them at import time); the classes live at
module level so nnU-Net's spawned augmentation workers can unpickle them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

LANDMARK_SHARE = 0.6
EDGE = 6  # voxels: a shifted class voxel stays this far inside the final patch


class _LandmarkLoader(nnUNetDataLoader):
    landmark_keys: tuple[int, ...] = ()
    # Relative chance of each landmark key among those present in the case (default: equal).
    landmark_weights: ClassVar[dict[int, float]] = {}
    shift = True  # move forced patches off-centre (False: nnU-Net's centring)

    def get_bbox(
        self,
        data_shape,
        force_fg,
        class_locations,
        overwrite_class=None,  # type: ignore[no-untyped-def]
        verbose=False,
    ):
        if force_fg and class_locations and overwrite_class is None:
            present = [k for k in self.landmark_keys if len(class_locations.get(k, ())) > 0]
            if present and np.random.rand() < LANDMARK_SHARE:
                w = np.array([self.landmark_weights.get(k, 1.0) for k in present])
                overwrite_class = present[np.random.choice(len(present), p=w / w.sum())]
        lbs, ubs = super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        if not force_fg or not self.shift:
            return lbs, ubs
        # Same sampling range as nnU-Net's random crops: the image padded by need_to_pad.
        patch = np.asarray(self.patch_size)
        pad = np.maximum(self.need_to_pad, patch - np.asarray(data_shape))
        low, high = -(pad // 2), np.asarray(data_shape) + pad // 2 + pad % 2 - patch
        reach = np.maximum(np.asarray(self.final_patch_size) // 2 - EDGE, 0)
        shift = np.array([np.random.randint(-r, r + 1) for r in reach])
        moved = np.clip(np.asarray(lbs) + shift, low, np.maximum(low, high))
        return [int(v) for v in moved], [int(v) for v in moved + patch]


class Step1LandmarkLoader(_LandmarkLoader):
    landmark_keys = (2, 3, 4, 5, 7)  # landmark discs and C1 (docs/method.md §4.1)


class Step2LandmarkLoader(_LandmarkLoader):
    landmark_keys = (2, 3, 4, 5, 9)  # landmark discs and the sacrum (docs/method.md §4.2)


class Step2CentredLoader(Step2LandmarkLoader):
    """The sampling before the shift: the shipped step 2 was trained from a run with it."""

    shift = False


# The neck landmarks, C2-C3 and C7-T1, are the ones a cervical or cervico-thoracic field of
# view holds; the 2026-12-05 step 1 never fired its C2-C3 head and fired "L5-S" on C7-T1, so
# the neck runs draw them 3.5 times as often as each other landmark.
NECK_WEIGHTS: dict[int, float] = {2: 3.5, 3: 3.5}


class Step1NeckLoader(Step1LandmarkLoader):
    landmark_weights = NECK_WEIGHTS


class Step2NeckLoader(Step2LandmarkLoader):
    landmark_weights = NECK_WEIGHTS
