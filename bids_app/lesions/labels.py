"""What a lesion model's outputs mean, read from its dataset.json, never assumed.

The lesion is the label whose name contains "lesion". For a region-based model (SCIseg V2:
`{"sc": [1, 2], "lesion": 2}`, `regions_class_order [1, 2]`) nnU-Net writes, per voxel, the
class of the last region head that fired, so the lesion is the class `regions_class_order`
gives the lesion head; for a plain-label model (SCT's MS model: `{"background": 0,
"lesion": 1}`) it is the label's value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bids_app.nnunet.weights import WeightsError


@dataclass(frozen=True)
class LesionLabels:
    """Output values of the lesion model: the lesion, and the cord (lesion included)."""

    lesion: int
    cord: tuple[int, ...]  # empty when the model has no cord label
    heads: int  # network outputs dataset.json implies (regions, or classes with background)


def read_labels(dataset_json: Path) -> LesionLabels:
    """The lesion and cord output values declared by a model's dataset.json."""
    try:
        data = json.loads(dataset_json.read_text())
        labels = data["labels"]
        names = [k for k in labels if k != "background"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{dataset_json}: no readable `labels` ({e})") from e
    lesion = [k for k in names if "lesion" in k.lower()]
    if len(lesion) != 1:
        found = ", ".join(names) or "none"
        raise WeightsError(
            f"{dataset_json}: needs exactly one label named like 'lesion' (labels: {found}); "
            "not a lesion model"
        )
    cord = [k for k in names if k.lower() in ("sc", "cord", "spinal_cord", "spinalcord")]
    order = data.get("regions_class_order")
    regions = order is not None or any(isinstance(labels[k], list) for k in names)
    if regions:
        if not isinstance(order, list) or len(order) != len(names):
            raise WeightsError(
                f"{dataset_json}: region labels need a regions_class_order of {len(names)} values"
            )
        value = {k: int(order[i]) for i, k in enumerate(names)}
        heads = len(names)
    else:
        value = {k: int(labels[k]) for k in names}
        heads = len(names) + 1
    lesion_value = value[lesion[0]]
    cord_values = (value[cord[0]], lesion_value) if cord else ()
    return LesionLabels(lesion_value, cord_values, heads)
