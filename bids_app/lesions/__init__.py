"""Spinal cord lesions: a second nnU-Net (SCIseg-like) run after the spine, its measures per
lesion and per vertebral level, and their outputs. Pure numpy/scipy except `model`."""
