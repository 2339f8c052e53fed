"""Pure numpy/scipy labeling of TotalSpineSeg network outputs (docs/method.md §2-§4).

Knows nothing of files, BIDS or networks: arrays in, arrays out, all on the 1 mm RAS
canonical grid (axis 0 = x, axis 1 = y = anterior, axis 2 = z = superior).
"""

from bids_app.labeling.canal import extract_soft, fill_canal
from bids_app.labeling.components import bbox_slices, largest_component
from bids_app.labeling.errors import LabelingError
from bids_app.labeling.iterative import LabelingOutput, iterative_label
from bids_app.labeling.levels import extract_alternate, extract_levels
from bids_app.labeling.presets import label_step1, label_step2

__all__ = [
    "LabelingError",
    "LabelingOutput",
    "bbox_slices",
    "extract_alternate",
    "extract_levels",
    "extract_soft",
    "fill_canal",
    "iterative_label",
    "label_step1",
    "label_step2",
    "largest_component",
]
