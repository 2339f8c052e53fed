"""What a user chooses that changes the result of one image: one frozen object.

The engine reads it, the stamp hashes it (`record()`), the sidecars and the status table show
it; so a result is only ever reused for the same options, and no layer rebuilds the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bids_app.nnunet import PRECISIONS, REFERENCE_PRECISION, REFERENCE_TILE_STEP

# The tile steps offered to users: below the reference's 0.5 costs more for no published
# benefit; 1.0 = patches do not overlap.
TILE_STEP_RANGE = (REFERENCE_TILE_STEP, 1.0)
# --fast: the tile step and precision that measured fastest at official size on CPU within
# the agreement the README states (benchmarks/fast.py); bfloat16 only where it is native.
# Larger tile steps (0.75, 1.0) took disc Dice below 0.98 with the demo models: not in --fast.
FAST_TILE_STEP = REFERENCE_TILE_STEP
FAST_PRECISION = "bf16"


@dataclass(frozen=True)
class SegmentOptions:
    """Options of one image's segmentation.

    `assume_top_disc` is a final disc label id (off by default, as in the reference);
    `localizer` is the output-relative path of the localizer labels that guided the image
    (per image: filled in by the participant run, ignored by the engine, which receives the
    localizer image itself). `tile_step` is the networks' sliding-window step (fraction of
    the patch): 0.5 is the reference; larger is the opt-in fast mode, a different result.
    `precision` is the networks' arithmetic (`auto` = the reference's, `fp32`, `bf16`).
    """

    step1_only: bool = False
    iso: bool = False
    assume_top_disc: int | None = None
    localizer: str | None = None
    tile_step: float = REFERENCE_TILE_STEP
    corrections: str | None = None
    precision: str = REFERENCE_PRECISION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")

    @property
    def differs_from_reference(self) -> bool:
        """Whether the networks run other than TotalSpineSeg's way (the fast-mode warning)."""
        return self.tile_step != REFERENCE_TILE_STEP or self.precision != REFERENCE_PRECISION

    def record(self) -> dict[str, object]:
        """JSON-ready form, the input of the stamp's options hash.

        An image without corrections, at the reference precision, hashes as before these
        options existed, so the results of earlier runs stay valid.
        """
        record = asdict(self)
        if record["corrections"] is None:
            del record["corrections"]
        if record["precision"] == REFERENCE_PRECISION:
            del record["precision"]
        return record
