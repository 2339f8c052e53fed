"""nnU-Net wrapper (`model`) and weights install/verification (`weights`); no label knowledge.

Import the submodules directly: `weights` stays light (no torch) for the CLI's weights command.
"""

# Sliding-window step as a fraction of the patch size: TotalSpineSeg predicts with 0.5
# (docs/method.md §1.5). Here, not in `model`, so that option parsing needs no torch.
REFERENCE_TILE_STEP = 0.5
# The networks' arithmetic: "auto" is what TotalSpineSeg gets from nnU-Net (float32 on CPU,
# float16 autocast on CUDA); "fp32" and "bf16" are the other choices (`model.precision_context`).
REFERENCE_PRECISION = "auto"
PRECISIONS = ("auto", "fp32", "bf16")
