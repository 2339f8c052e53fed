"""What a user chooses that changes the result of one image: one frozen object.

The engine reads it, the stamp hashes it (`record()`), the sidecars and the status table show
it; so a result is only ever reused for the same options, and no layer rebuilds the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bids_app.nnunet import REFERENCE_TILE_STEP

# The tile steps offered to users: below the reference's 0.5 costs more for no published
# benefit; 1.0 = patches do not overlap.
TILE_STEP_RANGE = (REFERENCE_TILE_STEP, 1.0)


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
    corrections: str | None = None

    def record(self) -> dict[str, object]:
        """JSON-ready form, the input of the stamp's options hash.

        An image without corrections hashes as before corrections existed, so the results
        of earlier runs stay valid.
        """
        record = asdict(self)
        if record["corrections"] is None:
            del record["corrections"]
        return record
