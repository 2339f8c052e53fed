"""The lesion model in a run: resolved once (a bad model stops the run), and its hashes in
each stamp it applies to.

The per-image lesion stage is `bids_app.run.stages.lesions`; the rest of the participant run
does not know about lesions.
"""

from __future__ import annotations

import logging

from bids_app.lesions.outputs import model_record
from bids_app.lesions.run import LesionRunner
from bids_app.lesions.weights import resolve_lesion_model
from bids_app.nnunet.weights import WeightsError
from bids_app.plumbing.errors import ExitCode, UserError

log = logging.getLogger(__name__)


def resolve_lesion_runner(
    model: str | None, suffixes: tuple[str, ...], threads: int | None
) -> LesionRunner | None:
    """The run's lesion runner (None without --lesion-model); a bad model exits 78."""
    if model is None:
        return None
    try:
        weights = resolve_lesion_model(model)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    log.info(
        "lesion model %s (%d fold(s)) on %s",
        weights.folder,
        len(weights.checkpoints),
        f"{', '.join(suffixes)} images" if suffixes else "the input image",
    )
    return LesionRunner(weights, suffixes, threads=threads)


def with_lesion_model(model: dict | None, runner: LesionRunner | None, suffix: str) -> dict | None:
    """The stamp's model record, plus the lesion model for the images it runs on: its hashes
    join the spine weights' so that a new or changed lesion model recomputes the image."""
    if model is None or runner is None or not runner.applies(suffix):
        return model
    record = model_record(runner.weights)
    lesion_hashes = {f"lesion:{k}": v for k, v in record["SHA256"].items()}
    return {**model, "sha256": {**model["sha256"], **lesion_hashes}, "lesion": record}
