"""nnU-Net wrapper (`model`) and weights install/verification (`weights`); no label knowledge.

Import the submodules directly: `weights` stays light (no torch) for the CLI's weights command.
"""

# Sliding-window step as a fraction of the patch size: TotalSpineSeg predicts with 0.5
# (docs/method.md §1.5). Here, not in `model`, so that option parsing needs no torch.
REFERENCE_TILE_STEP = 0.5
