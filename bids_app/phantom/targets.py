"""Step-1 and step-2 training targets derived from final labels (docs/method.md §4.1-4.2).

These are what the official models were trained to output, so demo models trained on them
plug into exactly the same inference code as the official weights.
"""

from __future__ import annotations

import numpy as np

from bids_app.plumbing import labels as L

_ODD_VERTEBRAE = frozenset([11, 13, 15, 17, 22, 24, 26, 28, 30, 32, 42, 44, 46])


def _disc_classes(final: np.ndarray, out: np.ndarray) -> None:
    discs = np.isin(final, list(L.DISCS))
    out[discs] = 1
    for raw, disc in L.LANDMARK_DISCS.items():
        out[final == disc] = raw


def step1_target(final: np.ndarray) -> np.ndarray:
    """Step-1 raw classes on `final`'s grid (uint8): discs 1-5, vertebrae 6/7, canal 8, cord 9."""
    out = np.zeros(final.shape, np.uint8)
    _disc_classes(final, out)
    out[np.isin(final, [*L.VERTEBRAE, L.SACRUM])] = 6
    out[final == 11] = 7
    out[final == L.CANAL] = 8
    out[final == L.CORD] = 9
    return out


def alternate_discs(final: np.ndarray, start: int) -> np.ndarray:
    """Every other present disc, from the `start`-th present one (uint8 0/1 mask)."""
    present = [d for d in sorted(L.DISCS) if (final == d).any()]
    return np.isin(final, present[start::2]).astype(np.uint8)


def step2_target(final: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Step-2 raw classes and the matching alternate-disc input channel, both on `final`'s grid.

    Classes: discs 1-5, 7 for a vertebra just below a disc marked in the channel (and the
    vertebra pattern continued to C1/C2, which have no disc above), 8 for the others,
    9 sacrum, 10 canal, 11 cord. `start` (0 or 1) picks the parity of the marked discs.
    """
    channel = alternate_discs(final, start)
    out = np.zeros(final.shape, np.uint8)
    _disc_classes(final, out)
    marked = {d for d in L.DISCS if d in final[channel > 0]}
    present_discs = [d for d in sorted(L.DISCS) if (final == d).any()]
    # Parity of the column: a vertebra below a marked disc is class 7. Where no disc above is
    # visible, continue the alternation from the anatomical (odd/even) pattern it implies.
    flip = False
    for disc in present_discs:
        below = L.VERTEBRA_BELOW_DISC.get(disc)
        if below is not None and below != L.SACRUM:
            flip = (disc in marked) != (below in _ODD_VERTEBRAE)
            break
    for v in L.VERTEBRAE:
        mask = final == v
        if mask.any():
            out[mask] = 7 if (v in _ODD_VERTEBRAE) != flip else 8
    out[final == L.SACRUM] = 9
    out[final == L.CANAL] = 10
    out[final == L.CORD] = 11
    return out, channel
