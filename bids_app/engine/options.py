"""What a user chooses that changes the result of one image: one frozen object.

The engine reads it, the stamp hashes it (`record()`), the sidecars and the status table show
it; so a result is only ever reused for the same options, and no layer rebuilds the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SegmentOptions:
    """Options of one image's segmentation.

    `assume_top_disc` is a final disc label id (off by default, as in the reference);
    `localizer` is the output-relative path of the localizer labels that guided the image
    (per image: filled in by the participant run, ignored by the engine, which receives the
    localizer image itself).
    """

    step1_only: bool = False
    iso: bool = False
    assume_top_disc: int | None = None
    localizer: str | None = None
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
