"""The QC flag thresholds, in a module of their own: the flags and the plausibility checks
both read them, and neither imports the other for them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    """Flag thresholds; recorded in every qc.json and in group_qc.json."""

    split_min_fraction: float = 0.1  # a second component counts from this share of the largest
    split_min_mm3: float = 20.0  # ... and from this volume
    cord_outside_fraction: float = 0.25  # share of the cord surface not bordered by canal
    thick_slice_ratio: float = 2.0  # slice thickness / in-plane voxel size
    tukey_k: float = 1.5
    tukey_min_n: int = 10
    fragment_mm3: float = 50.0  # a level label smaller than this is a fragment, not a level
    disc_offset_mm: float = 30.0  # disc centroid to the line joining its vertebrae' centroids
    size_jump: float = 1.5  # vertebral volume or height / mean of its neighbours', or inverse
    canal_narrowing_ratio: float = 0.7  # canal AP or area at a disc / mean of its vertebrae'

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
