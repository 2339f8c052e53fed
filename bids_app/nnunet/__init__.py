"""nnU-Net wrapper (`model`) and weights install/verification (`weights`); no label knowledge.

Import the submodules directly: `weights` stays light (no torch) for the CLI's weights command.
"""
