"""What a user chooses that changes the result of one image: one frozen object.

The engine reads it, the stamp hashes it (`record()`), the sidecars and the status table show
it; so a result is only ever reused for the same options, and no layer rebuilds the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Sliding-window step of the networks (fraction of the patch): the reference's, and the range
# offered to users (below 0.5 costs more for no published benefit; 1.0 = patches do not overlap).
REFERENCE_TILE_STEP = 0.5
TILE_STEP_RANGE = (0.5, 1.0)


@dataclass(frozen=True)
class SegmentOptions:
    """Options of one image's segmentation.

    `assume_top_disc` is a final disc label id (off by default, as in the reference);
    `localizer` is the output-relative path of the localizer labels that guided the image
    (per image: filled in by the participant run, ignored by the engine, which receives the
    localizer image itself). `tile_step` is the networks' sliding-window step (fraction of
    the patch): 0.5 is the reference; larger is the opt-in fast mode, a different result.
    """

    step1_only: bool = False
    iso: bool = False
    assume_top_disc: int | None = None
    localizer: str | None = None
    tile_step: float = REFERENCE_TILE_STEP

    def record(self) -> dict[str, object]:
        """JSON-ready form, the input of the stamp's options hash."""
        return asdict(self)
