"""Vertebral level of any point, from SpineSeg's own final labels (no template registration).

A level runs from the middle of the disc above its vertebra to the middle of the disc below:
each disc present defines a plane through its centroid, normal to its thinnest axis (the
spine's local axis). A point lies below every disc plane it is on the inferior side of, and
its level is the vertebra below the lowest such disc. Above the first disc, C1 and C2 are
told apart by the lowest extent of C1 along the spine axis. The level names are those of the
labels, so they are relative when the levels were assumed (no landmark disc found).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_app.plumbing import labels as L

C1, C2 = 11, 12


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _vertebra_above(disc: int, present: set[int]) -> int:
    """Vertebra above a disc ("C2-C3" -> C2); L5-S sits under L6 on a six-lumbar spine."""
    if disc == 100 and 96 in present:
        return 46
    name = L.DISCS[disc].split("-")[0]
    return next(k for k, v in L.VERTEBRAE.items() if v == name)


@dataclass(frozen=True)
class _Disc:
    label: int
    centre: np.ndarray  # scanner mm
    normal: np.ndarray  # unit, pointing inferiorly


class LevelMap:
    """Disc planes of one labelled image; `levels(points)` names the level of each point."""

    def __init__(self, spine: np.ndarray, affine: np.ndarray):
        self.discs: list[_Disc] = []
        present = {int(v) for v in np.unique(spine)}
        for label in sorted(d for d in L.DISCS if d in present):
            pts = _world(affine, np.argwhere(spine == label).astype(float))
            if len(pts) < 4:
                continue
            centre = pts.mean(0)
            _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
            normal = vt[-1] if vt[-1][2] < 0 else -vt[-1]
            self.discs.append(_Disc(label, centre, normal))
        self.present = present
        self.c1_bottom: float | None = None
        if self.discs and C1 in present:
            first = self.discs[0]
            c1 = _world(affine, np.argwhere(spine == C1).astype(float))
            self.c1_bottom = float(((c1 - first.centre) @ first.normal).max())

    @property
    def known(self) -> bool:
        return bool(self.discs)

    def levels(self, points: np.ndarray) -> np.ndarray:
        """Vertebra label (11-50) of each point (n, 3) in scanner mm; 0 without discs."""
        out = np.zeros(len(points), np.int16)
        if not self.discs:
            return out
        below = np.zeros((len(points), len(self.discs)), bool)
        for k, disc in enumerate(self.discs):
            below[:, k] = (points - disc.centre) @ disc.normal > 0
        # Index of the lowest disc the point is below (-1: above every disc).
        lowest = np.where(below.any(1), len(self.discs) - 1 - np.argmax(below[:, ::-1], 1), -1)
        for k, disc in enumerate(self.discs):
            out[lowest == k] = L.VERTEBRA_BELOW_DISC[disc.label]
        top = lowest < 0
        out[top] = _vertebra_above(self.discs[0].label, self.present)
        if self.c1_bottom is not None and self.discs[0].label == 63:
            first = self.discs[0]
            depth = (points - first.centre) @ first.normal
            out[top & (depth <= self.c1_bottom)] = C1
        return out


def level_names(labels: np.ndarray) -> list[str]:
    return [L.level_name(int(v)) if v else "n/a" for v in labels]
