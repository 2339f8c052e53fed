"""Endplates read on the image: a body's label is trimmed where the image shows bright disc.

A network that has rarely seen a fracture draws a wedged, biconcave or crushed body at its
normal height: the label runs on into the disc that fills the sunk endplate's space, and
heights read on it miss the fracture. The image does not, where the disc is brighter than
the marrow (a hydrated disc, or fluid, on T2w): then, on a body's mid-sagittal section, each
column of the label is walked inward from each end while the (slightly smoothed) image is
nearer that end's disc than its marrow (`_disc_like`), and those samples are dropped. The
walk stops at the endplate's dark cortex or where the image stops looking like disc for
`STOP_MM` (the marrow), so a label that already ends at the endplate loses nothing, and it
never adds what the label does not hold. An end is left as labelled when its disc is not on
the section, or when the disc is not brighter than the marrow by `MIN_CONTRAST` noise levels
and `MIN_RELATIVE`: a dark disc (T1w, a degenerated disc on T2w) looks like the dark cortex
and subchondral bone next to a real endplate, and trimming there shortened the manual labels
of a real T2w scan by up to 11 mm (docs/vertebrae.md). Pure numpy/scipy: arrays in, arrays
out, all on the section's grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SMOOTH_MM = 0.5  # Gaussian sigma of the image on the section before it is read
MIN_CONTRAST = 3.0  # disc - marrow in noise standard deviations, for an end to be trimmed
MIN_RELATIVE = 0.1  # and by this share of the disc (a noiseless image has no noise)
MAX_TRIM = 0.6  # share of a column's labelled run that trimming may take
CORE = (0.35, 0.65)  # rows of the body's labelled height whose samples give the marrow
STOP_MM = 1.5  # body-like image this long before the cortex: the walk is in the marrow (an edge
# between disc and cortex passes the marrow's intensity too, over a shorter run)
MIN_TRIM_MM = 1.0  # shorter disc-like runs are the label's partial volume, not a sunk plate
CORTEX_SHARE = 0.15  # the cortex: darker than the marrow by this share of the contrast
COLUMN_MM = 1.0  # the disc's intensity is read on the columns this close, where it has any


def trim_to_image(
    mask: np.ndarray,
    image: np.ndarray,
    disc_above: np.ndarray,
    disc_below: np.ndarray,
    step_mm: float,
) -> np.ndarray:
    """The body mask (rows superior first, columns posterior first; `step_mm` apart) less
    its samples at either end that the image shows as the disc beyond that end.

    `image` holds the image's intensities on the same section; `disc_above` / `disc_below`
    mark the samples labelled as the disc above / below the body.
    """
    rows = np.flatnonzero(mask.any(1))
    if rows.size < 5:
        return mask
    smooth = ndimage.gaussian_filter(image.astype(np.float64), SMOOTH_MM / step_mm)
    lo, hi = rows[0] + CORE[0] * rows.size, rows[0] + CORE[1] * rows.size
    core = mask.copy()
    core[: int(lo)] = False
    core[int(np.ceil(hi)) :] = False
    if core.sum() < 10:
        return mask
    # Noise: the spread of differences 1 mm apart inside the body (robust, and blind to the
    # body holding both marrow and disc), over sqrt(2) for the difference of two samples.
    shift = max(round(1.0 / step_mm), 1)
    both = core[:, shift:] & core[:, :-shift]
    diff = (image[:, shift:] - image[:, :-shift])[both]
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2)
    out = mask.copy()
    reach = round(COLUMN_MM / step_mm)
    stop = max(round(STOP_MM / step_mm), 1)
    least = round(MIN_TRIM_MM / step_mm)
    columns = np.flatnonzero(core.any(0))
    # Each column's own marrow: a column near a wall also holds the wall's cortex.
    marrow = [float(np.median(smooth[core[:, j], j])) for j in columns]
    for disc, top in ((disc_above, True), (disc_below, False)):
        if disc.sum() < 10:
            continue
        d_section = float(np.median(smooth[disc]))
        for j, m in zip(columns, marrow, strict=True):
            near = disc[:, max(j - reach, 0) : j + reach + 1]
            band = smooth[:, max(j - reach, 0) : j + reach + 1][near]
            d = float(np.median(band)) if band.size >= 5 else d_section
            if d - m < max(MIN_CONTRAST * noise, MIN_RELATIVE * abs(d)):
                continue
            col = np.flatnonzero(mask[:, j])
            walk = col if top else col[::-1]
            limit = int(MAX_TRIM * col.size)
            n = _disc_run(*_disc_like(smooth[walk[:limit], j], m, d), stop)
            if n >= least:
                out[walk[:n], j] = False
    return out


def _disc_like(values: np.ndarray, marrow: float, disc: float) -> tuple[np.ndarray, np.ndarray]:
    """(disc-like, cortex-like) intensities, for a disc brighter than the marrow: past the
    midpoint towards the disc; darker than the marrow by CORTEX_SHARE of the contrast, the
    endplate's cortex, which marks the body's end."""
    cortex = values < marrow - CORTEX_SHARE * (disc - marrow)
    return values > (marrow + disc) / 2, cortex


def _disc_run(like: np.ndarray, cortex: np.ndarray, stop: int) -> int:
    """Length of the disc-like run at the start of a walk: up to the cortex, or up to the
    first `stop` samples in a row that are neither (the marrow)."""
    end = int(np.argmax(cortex)) if cortex.any() else like.size
    if end >= stop:
        windows = np.lib.stride_tricks.sliding_window_view(~like[:end], stop).all(1)
        if windows.any():
            end = int(np.argmax(windows))
    return end
