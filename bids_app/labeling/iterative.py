"""Iterative landmark labeling of discs and vertebrae (docs/method.md §3.2).

Turns a raw network output (generic disc/vertebra classes plus a few landmark classes) into
anatomical level labels, exactly as the reference tool totalspineseg==20260807 does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bids_app.labeling.components import (
    CROSS,
    Box,
    axis_spans,
    bbox_slices,
    drop_small,
    grow_box,
    label_components,
    label_mask,
)
from bids_app.labeling.errors import LabelingError
from bids_app.labeling.ordering import Canal, canal_geometry, component_heights, si_order
from bids_app.plumbing.labels import DISCS

# Slots per region (cervical, thoracic, lumbar, sacral) below each landmark (§3, defaults).
REGION_MAX_SIZES = (5, 12, 6, 1)
REGION_DEFAULT_SIZES = (5, 12, 5, 1)
# Vertebrae above the first disc region: C1, C2.
VERTEBRAE_ABOVE_FIRST_DISC = (11, 12)
# Margin of the working crop: one dilation plus one fill-and-dilate step must fit inside.
WORK_MARGIN = 2


@dataclass
class LabelingOutput:
    """Result of `iterative_label`: labels on the caller's grid and the landmarks used.

    `landmarks` names the discs the count was anchored on, superior first (e.g. ["C2-C3",
    "L5-S"] or ["localizer T12-L1"]). It is empty in one rare case the reference also lets
    through: the landmark class lay mostly outside every disc component, so no disc (and no
    vertebra) could be numbered and `labels` holds only canal, cord and bone overrides.
    """

    labels: np.ndarray  # uint8, same grid as the input segmentation
    landmarks: list[str] = field(default_factory=list)


def region_labels(starts: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """Output labels of consecutive regions: region k holds starts[k], starts[k]+1, ..."""
    return [start + i for start, size in zip(starts, sizes, strict=True) for i in range(size)]


def _names(labels: Sequence[int]) -> str:
    names = [DISCS.get(int(lab), str(lab)) for lab in labels]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _majority(values: np.ndarray) -> int:
    """Most frequent value; the smallest wins a tie (argmax of a bincount)."""
    return int(np.argmax(np.bincount(values)))


def _set_box(objects: Sequence[Box | None], labels: Sequence[int]) -> Box | None:
    """Bounding box of the voxels holding any of `labels` (class ids > 0), from `objects`
    (`ndimage.find_objects` of the class map): `bbox_slices(label_mask(...), 0)` without a
    pass over the map."""
    boxes = [objects[lab - 1] for lab in labels if 0 < lab <= len(objects)]
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    return tuple(  # type: ignore[return-value]
        slice(min(b[axis].start for b in found), max(b[axis].stop for b in found))
        for axis in range(len(found[0]))
    )


def _components(
    work: np.ndarray,
    label_sets: Sequence[Sequence[int]],
    min_size: int,
    objects: Sequence[Box | None],
):
    """Label components per label set, ids offset across sets (§3.1 `si_components`).

    `objects` is `ndimage.find_objects(work)`: each set is masked only in its own box."""
    labelled = np.zeros(work.shape, dtype=np.int32)
    total = 0
    for labels in label_sets:
        found = _set_box(objects, labels)
        if found is None:
            continue
        box = grow_box(found, work.shape, 1)
        part, n = label_components(label_mask(work[box], labels), dilate=1)
        n = drop_small(part, n, min_size)
        part[part > 0] += total
        labelled[box] = np.maximum(labelled[box], part)
        total += n
    return labelled, total


class _Labeler:
    """One run of the procedure; holds the working crop and the intermediate components."""

    def __init__(self, work: np.ndarray, canal: Canal, min_component_size: int):
        self.work = work
        self.canal = canal
        self.min_size = min_component_size
        self.objects = ndimage.find_objects(work)  # each class's box, in one pass

    def discs(self, disc_labels: Sequence[int]) -> tuple[np.ndarray, dict[int, int]]:
        labelled, n = _components(self.work, [disc_labels], self.min_size, self.objects)
        if n == 0:
            raise LabelingError(
                f"no intervertebral disc of at least {self.min_size} voxels in the "
                "segmentation: levels cannot be assigned"
            )
        return labelled, component_heights(labelled, self.canal)

    def vertebrae(
        self, vertebrae_labels: Sequence[int], extra_labels: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, int]]:
        sets = [[lab] for lab in vertebrae_labels]
        labelled, n = _components(self.work, sets, self.min_size, self.objects)
        if n == 0:
            raise LabelingError(
                f"no vertebra of at least {self.min_size} voxels in the segmentation: "
                "vertebrae cannot be labelled"
            )
        heights = self._merge_same_class(labelled, component_heights(labelled, self.canal))
        if extra_labels:
            heights = self._absorb_extra(labelled, heights, extra_labels)
        return labelled, heights

    def _merge_same_class(self, labelled: np.ndarray, heights: dict[int, int]) -> dict[int, int]:
        """Join consecutive vertebra pieces of the same class (odd/even/sacrum), §3.2 step 3."""
        objects = ndimage.find_objects(labelled)
        kept_id, kept_class = 0, -1
        merged = False
        for cid in si_order(heights):
            obj = objects[cid - 1]
            local = labelled[obj] == cid
            first = np.unravel_index(int(np.argmax(local)), local.shape)
            cls = int(self.work[obj][first])
            if cls == kept_class:
                labelled[obj][local] = kept_id
                merged = True
            else:
                kept_id, kept_class = cid, cls
        return component_heights(labelled, self.canal) if merged else heights

    def _absorb_extra(
        self, labelled: np.ndarray, heights: dict[int, int], extra_labels: Sequence[int]
    ) -> dict[int, int]:
        """Give generic-vertebra voxels to the filled vertebra around them, §3.2 step 4.

        Inferior vertebrae go first, so a superior one wins where two overlap.
        """
        extra = label_mask(self.work, extra_labels)
        objects = ndimage.find_objects(labelled)
        for cid in reversed(si_order(heights)):
            box = grow_box(objects[cid - 1], labelled.shape, 2)
            region = ndimage.binary_dilation(axis_spans(labelled[box] == cid), CROSS)
            labelled[box][region & extra[box]] = cid
        return component_heights(labelled, self.canal)


def _checked_landmarks(
    work: np.ndarray,
    discs: np.ndarray,
    order: list[int],
    selected: list[int],
    landmark_labels: Sequence[int],
    objects: Sequence[Box | None],
) -> list[int]:
    """Drop C2-C3 / L5-S from the selection when they are implausible (§3.2 step 5).

    C2-C3 must touch the most superior disc. L5-S (PR #146) is dropped when a disc below the
    disc holding the first L5-S voxel (C order) is bigger than 10 % of all L5-S voxels: a
    sacral disc would then be the real bottom. Each landmark is looked at in its own box
    (`objects` = `ndimage.find_objects(work)`); C order within a box is the full array's.
    """
    top, bottom = landmark_labels[0], landmark_labels[-1]
    selected = list(selected)
    if top in selected:
        box = _set_box(objects, [top])
        if box is None or not np.any(discs[box][work[box] == top] == order[0]):
            selected.remove(top)
    if bottom in selected and (box := _set_box(objects, [bottom])) is not None:
        bottom_mask = work[box] == bottom
        hosts = discs[box][bottom_mask & (discs[box] > 0)]
        if hosts.size:
            below = order[order.index(int(hosts[0])) + 1 :]
            sizes = np.bincount(discs.ravel(), minlength=max(order) + 1)
            limit = 0.1 * int(bottom_mask.sum())
            if any(sizes[cid] > limit for cid in below):
                selected.remove(bottom)
    return selected


def _landmarks_from_localizer(
    loc: np.ndarray,
    discs: np.ndarray,
    order: list[int],
    loc_disc_labels: Sequence[int],
    landmark_outputs: Sequence[int],
) -> dict[int, int]:
    """Disc id -> output label read from a localizer's overlap (§3.2 step 6a)."""
    overlap = label_mask(loc, loc_disc_labels) & (discs > 0)
    loc_values = loc[overlap].astype(np.int64)
    hosts = discs[overlap]
    found: dict[int, int] = {}
    for out in landmark_outputs:
        on = loc_values == out
        if on.any():
            found[_majority(hosts[on])] = out
    if not found and hosts.size:
        for cid in order:
            on = hosts == cid
            if on.any():
                found[cid] = _majority(loc_values[on])
                break
    return found


def _landmarks_from_segmentation(
    work: np.ndarray,
    discs: np.ndarray,
    selected: list[int],
    landmark_labels: Sequence[int],
    landmark_outputs: Sequence[int],
    min_landmark_size: int,
) -> dict[int, int]:
    """Disc id -> output label from the landmark classes themselves (§3.2 step 6b).

    The first two selected landmarks are always tried; later ones only while none is found.
    """
    output_of = dict(zip(landmark_labels, landmark_outputs, strict=True))
    found: dict[int, int] = {}
    for pos, lab in enumerate(selected):
        if found and pos >= 2:
            break
        mask = work == lab
        if int(mask.sum()) <= min_landmark_size:
            continue
        # Background (0) can win here, as in the reference; such a landmark numbers nothing.
        cid = _majority(discs[mask])
        inside = work[discs == cid]
        inside = inside[label_mask(inside, landmark_labels)]
        if inside.size and _majority(inside.astype(np.int64)) == lab:
            found[cid] = output_of[lab]
    return found


def _number_discs(
    order: list[int], landmarks: dict[int, int], default: list[int], possible: list[int]
) -> dict[int, int]:
    """Disc id -> output label, counted from the landmarks (§3.2 step 7)."""
    anchored = [cid for cid in order if cid in landmarks]
    if not anchored:
        return {}
    first, first_out = anchored[0], landmarks[anchored[0]]
    if first_out not in default:
        raise LabelingError(
            f"the top landmark disc was given label {first_out}, which cannot start a "
            "count of the levels"
        )
    a, b = order.index(first), default.index(first_out)
    numbered = dict(zip(order[max(0, a - b) :], default[max(0, b - a) :], strict=False))
    for cid in anchored:
        if landmarks[cid] not in possible:
            raise LabelingError(f"landmark label {landmarks[cid]} is not a disc level")
        start = possible.index(landmarks[cid])
        numbered.update(zip(order[order.index(cid) :], possible[start:], strict=False))
    return numbered


def _number_vertebrae(
    disc_heights: dict[int, int],
    disc_outputs: dict[int, int],
    vert_heights: dict[int, int],
    possible_discs: list[int],
    vert_default: list[int],
    vert_possible: list[int],
) -> dict[int, int]:
    """Vertebra id -> output label from the numbered discs around it (§3.2 step 8)."""
    below = dict(zip(possible_discs, vert_possible[len(VERTEBRAE_ABOVE_FIRST_DISC) :], strict=True))
    seq = sorted(
        [(z, cid, True) for cid, z in vert_heights.items()]
        + [(z, cid, False) for cid, z in disc_heights.items()],
        reverse=True,
    )
    n = len(seq)

    def is_disc(k: int) -> bool:
        return not seq[k][2]

    def swap(i: int, j: int) -> None:
        seq[i], seq[j] = seq[j], seq[i]

    for idx in range(n - 1):
        if is_disc(idx) and is_disc(idx + 1):
            if idx < n - 3 and not is_disc(idx + 2) and not is_disc(idx + 3):
                swap(idx + 1, idx + 2)
            elif idx > 1 and not is_disc(idx - 1) and not is_disc(idx - 2):
                swap(idx, idx - 1)
    if n > 2 and is_disc(0) and not is_disc(1) and not is_disc(2):
        swap(0, 1)
    if n > 2 and not is_disc(n - 3) and not is_disc(n - 2) and is_disc(n - 1):
        swap(n - 2, n - 1)

    numbered: dict[int, int] = {}
    current = 0
    seen_disc = False
    for pos, (_, cid, is_vertebra) in enumerate(seq):
        if not is_vertebra:
            if cid not in disc_outputs:
                continue
            current = below[disc_outputs[cid]]
            if not seen_disc and pos > 0 and not numbered:
                k = vert_default.index(current)
                above = [e[1] for e in reversed(seq[:pos]) if e[2]]
                numbered.update(zip(above, reversed(vert_default[:k]), strict=False))
            seen_disc = True
        elif current > 0:
            last_after_vertebra = pos == n - 1 and pos > 0 and not is_disc(pos - 1)
            if last_after_vertebra and current != vert_possible[-1]:
                numbered[cid] = vert_possible[vert_possible.index(current) + 1]
            else:
                numbered[cid] = current
    return numbered


def _paint(labelled: np.ndarray, outputs: dict[int, int]) -> np.ndarray:
    """uint8 map of component ids through an id -> label table (0 for unnumbered ids)."""
    lut = np.zeros(int(labelled.max()) + 1, dtype=np.uint8)
    for cid, out in outputs.items():
        lut[cid] = out
    return lut[labelled]


def _override(out: np.ndarray, seg: np.ndarray, rules: Sequence[tuple[Sequence[int], int]]) -> None:
    """`out[seg ∈ sources] = target` for each rule in turn (a later rule wins), in place.

    For 8/16-bit class maps one table lookup does every rule in a single pass over `seg`.
    """
    if not (seg.dtype.kind == "u" and seg.dtype.itemsize <= 2):
        for sources, target in rules:
            if len(sources):
                out[label_mask(seg, sources)] = target
        return
    size = 1 << (8 * seg.dtype.itemsize)
    hit, value = np.zeros(size, bool), np.zeros(size, out.dtype)
    for sources, target in rules:
        inside = [int(v) for v in sources if 0 <= int(v) < size]
        hit[inside], value[inside] = True, target
    np.copyto(out, value[seg], where=hit[seg])


def iterative_label(
    seg: np.ndarray,
    *,
    disc_labels: Sequence[int],
    disc_landmark_labels: Sequence[int],
    disc_landmark_output_labels: Sequence[int],
    selected_disc_landmarks: Sequence[int],
    vertebrae_labels: Sequence[int] = (),
    vertebrae_landmark_output_labels: Sequence[int] = (),
    vertebrae_extra_labels: Sequence[int] = (),
    canal_labels: Sequence[int] = (),
    canal_output_label: int = 2,
    cord_labels: Sequence[int] = (),
    cord_output_label: int = 1,
    sacrum_labels: Sequence[int] = (),
    sacrum_output_label: int = 50,
    map_input_dict: Mapping[int, int] | None = None,
    loc: np.ndarray | None = None,
    loc_disc_labels: Sequence[int] = range(63, 101),
    min_component_size: int = 200,
    min_landmark_size: int = 200,
    default_superior_disc: int | None = None,
) -> LabelingOutput:
    """Label discs (and vertebrae) by counting from landmark discs or a localizer (§3.2).

    `default_superior_disc` is the reference's `disc_default_superior_output`: the final label
    given to the most superior disc when neither landmarks nor a localizer number any disc.
    The reference always leaves it off (None here), and so does SpineSeg unless asked.

    `seg` is a raw class map on the 1 mm RAS grid (axis 2 = superior, axis 1 = anterior);
    `loc`, if given, is a final-label localizer already resampled onto the same grid. The
    returned labels are uint8 on that grid. Raises LabelingError when the levels cannot be
    assigned (no canal, no disc, no landmark).
    """
    if loc is not None and loc.shape != seg.shape:
        raise LabelingError(f"localizer shape {loc.shape} does not match segmentation {seg.shape}")
    canal_and_cord = [*canal_labels, *cord_labels]
    box = bbox_slices(seg, margin=WORK_MARGIN)
    if box is None:
        raise LabelingError("the segmentation is empty: levels cannot be assigned")
    work = seg[box]
    labeler = _Labeler(work, canal_geometry(label_mask(work, canal_and_cord)), min_component_size)

    discs, disc_heights = labeler.discs(disc_labels)
    disc_order = si_order(disc_heights)
    if vertebrae_labels:
        vertebrae, vert_heights = labeler.vertebrae(vertebrae_labels, vertebrae_extra_labels)

    landmarks: dict[int, int] = {}
    prefix = ""
    if loc is not None:
        landmarks = _landmarks_from_localizer(
            loc[box], discs, disc_order, loc_disc_labels, disc_landmark_output_labels
        )
        prefix = "localizer " if landmarks else ""
    if not landmarks:
        selected = _checked_landmarks(
            work,
            discs,
            disc_order,
            list(selected_disc_landmarks),
            disc_landmark_labels,
            labeler.objects,
        )
        landmarks = _landmarks_from_segmentation(
            work,
            discs,
            selected,
            disc_landmark_labels,
            disc_landmark_output_labels,
            min_landmark_size,
        )
    if not landmarks and default_superior_disc and disc_order:
        landmarks = {disc_order[0]: default_superior_disc}
        prefix = "assumed top disc "
    if not landmarks:
        wanted = [
            out
            for lab, out in zip(disc_landmark_labels, disc_landmark_output_labels, strict=True)
            if lab in selected_disc_landmarks
        ]
        source = "the localizer overlaps no disc" if loc is not None else "no localizer given"
        raise LabelingError(
            f"no landmark disc ({_names(wanted)}) found and {source}: levels cannot be "
            "assigned; use a localizer (--localizer-suffix, or --loc for `spineseg segment`) "
            "or --assume-top-disc (e.g. C2-C3 when the scan starts at C1)"
        )

    possible = region_labels(disc_landmark_output_labels, REGION_MAX_SIZES)
    default = region_labels(disc_landmark_output_labels, REGION_DEFAULT_SIZES)
    disc_outputs = _number_discs(disc_order, landmarks, default, possible)

    out = np.zeros(seg.shape, dtype=np.uint8)
    work_out = _paint(discs, disc_outputs)
    if vertebrae_labels:
        vert_possible = [
            *VERTEBRAE_ABOVE_FIRST_DISC,
            *region_labels(vertebrae_landmark_output_labels, REGION_MAX_SIZES),
        ]
        vert_default = [
            *VERTEBRAE_ABOVE_FIRST_DISC,
            *region_labels(vertebrae_landmark_output_labels, REGION_DEFAULT_SIZES),
        ]
        vert_outputs = _number_vertebrae(
            disc_heights, disc_outputs, vert_heights, possible, vert_default, vert_possible
        )
        painted = _paint(vertebrae, vert_outputs)
        np.copyto(work_out, painted, where=painted > 0)

    overrides = [
        (canal_labels, canal_output_label),
        (cord_labels, cord_output_label),
        (sacrum_labels, sacrum_output_label),
        *(([src], dst) for src, dst in (map_input_dict or {}).items()),
    ]
    _override(work_out, work, overrides)
    out[box] = work_out

    used = [landmarks[cid] for cid in disc_order if cid in landmarks]
    names = [prefix + DISCS.get(label, str(label)) for label in used]
    return LabelingOutput(labels=out, landmarks=names)
