"""How much memory one image's arrays need on the 1 mm grid, before anything is allocated.

The peak of a SpineSeg image is set by nnU-Net's sliding window and export, whose arrays grow
with the 1 mm grid and the number of region heads (docs/method.md §1.5, §4.1-4.2), not with the
network. This module counts those arrays from nnU-Net 2.8.1's `predict_single_npy_array` path
as `NnUNetModel.predict` drives it, so a run can refuse or queue an image that would not fit.

Not counted: the networks' weights and the activations of the patch in flight (constant per
model: measure them once per weights set, e.g. with `benchmarks/realsize.py`), the native-grid
outputs written at the end, and the allocator's slack. Pure arithmetic: no numpy, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

F32, F16, I16, U8 = 4, 2, 2, 1


def _voxels(shape: Sequence[int], name: str) -> int:
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"{name} must be three positive whole numbers, got {tuple(shape)}")
    return math.prod(int(n) for n in shape)


def _padded(shape: Sequence[int], patch_size: Sequence[int] | None) -> int:
    """Voxels after nnU-Net pads an image smaller than the patch up to the patch."""
    if patch_size is None:
        return math.prod(shape)
    _voxels(patch_size, "patch_size")
    return math.prod(max(n, p) for n, p in zip(shape, patch_size, strict=True))


def step_peak_bytes(
    shape: Sequence[int],
    n_channels: int,
    n_heads: int,
    *,
    probabilities: bool,
    patch_size: Sequence[int] | None = None,
) -> int:
    """Peak bytes of one `NnUNetModel.predict` call on a grid of `shape` voxels.

    Alive throughout: our float32 copy of the input in nnU-Net's axis order and nnU-Net's
    normalised copy (2 x 4 B per channel-voxel). Then the larger of
    - the sliding window: the input padded to the patch (4 B per channel), the float16 logits
      sum (2 B per head) and the float16 weight count (2 B), all on the padded grid;
    - the export: float16 logits, their float32 copy and its sigmoid (2 + 4 + 4 B per head),
      plus the int16 label map;
    - with `probabilities`, the probabilities put back into the uncropped grid and our
      transposed copy of them (2 x 4 B per head) next to the labels.
    """
    voxels = _voxels(shape, "shape")
    padded = _padded(shape, patch_size)
    if n_channels < 1 or n_heads < 1:
        raise ValueError(f"need at least one channel and one head, got {n_channels}, {n_heads}")
    inputs = 2 * F32 * n_channels * voxels
    sliding = F32 * n_channels * padded + F16 * n_heads * padded + F16 * padded
    export = (F16 + 2 * F32) * n_heads * voxels + I16 * voxels
    returned = 2 * F32 * n_heads * voxels + 2 * U8 * voxels if probabilities else 0
    return inputs + max(sliding, export, returned)


def estimate_peak_bytes(
    shape_1mm: Sequence[int],
    n_step1_heads: int,
    n_step2_heads: int,
    *,
    step2_shape: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None,
    input_itemsize: int = F32,
    step1_only: bool = False,
) -> int:
    """Estimated peak bytes of one image's arrays on the 1 mm grid (see the module docstring).

    `shape_1mm`: the 1 mm canonical grid (`engine.geometry` gives it before resampling);
    `step2_shape`: step 2's crop (step-1 labels +- 10 voxels), unknown before step 1, so by
    default the whole grid (an upper bound); `patch_size`: the networks' patch (from
    plans.json), which matters only for images smaller than it; `input_itemsize`: bytes per
    voxel of the resampled image (its input dtype).

    Step 1 (one channel, probabilities kept for the soft maps) runs beside the 1 mm image.
    Step 2 (image + alternate-disc channel) runs beside the 1 mm image, the step-1 labels,
    the raw step-1 output, the two float32 soft maps and the final label map, plus its own
    stacked float32 input.
    """
    voxels = _voxels(shape_1mm, "shape_1mm")
    crop = tuple(shape_1mm) if step2_shape is None else tuple(step2_shape)
    crop_voxels = _voxels(crop, "step2_shape")
    if any(c > n for c, n in zip(crop, shape_1mm, strict=True)):
        raise ValueError(f"step2_shape {crop} is larger than the 1 mm grid {tuple(shape_1mm)}")
    image = input_itemsize * voxels
    step1 = image + step_peak_bytes(
        shape_1mm, 1, n_step1_heads, probabilities=True, patch_size=patch_size
    )
    if step1_only:
        return step1
    step1_outputs = (3 * U8 + 2 * F32) * voxels  # labels, raw output, final; two soft maps
    step2 = (
        image
        + step1_outputs
        + 2 * F32 * crop_voxels
        + step_peak_bytes(crop, 2, n_step2_heads, probabilities=False, patch_size=patch_size)
    )
    return max(step1, step2)
