"""Build golden cases for SpineSeg's labeling tests from the reference tool's own utilities.

Hand-made raw step-1 / step-2 label maps (docs/method.md §4.1/§4.2, 1 mm RAS, uint8) are run through
the reference console scripts (PyPI totalspineseg==20260807, installed by reference_env.sh in its
own venv) with exactly the arguments its pipeline uses (docs/method.md §1.4 steps 12, 14, 20, 22.9,
22.10). Each case is saved as tests/labeling/golden/<case>.npz plus cases.json, so SpineSeg's
tests can compare its labeling against the reference without the reference installed.

Usage: python benchmarks/make_labeling_goldens.py --refenv /work/refenv [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REFERENCE = "totalspineseg==20260807"
SHAPE_XY = (40, 40)
# Body (discs and vertebrae) and canal footprints in the axial plane (x, y); RAS: y = anterior,
# so the canal (smaller y) is posterior to the bodies.
BODY_X, BODY_Y = (12, 28), (18, 32)
CANAL_X, CANAL_Y = (14, 26), (5, 15)
CORD_X, CORD_Y = (18, 22), (8, 12)

# fmt: off
# Reference arguments, copied from the pipeline calls of totalspineseg 20260807
# (inference.py; docs/method.md §1.4). Minimum component size (200) and landmark size (> 200)
# are the PyPI defaults inside iterative_label and have no CLI flag.
STEP1_ARGS = [
    "--selected-disc-landmarks", "2", "5", "3", "4",
    "--disc-labels", "1-5",
    "--disc-landmark-labels", "2", "3", "4", "5",
    "--disc-landmark-output-labels", "63", "71", "91", "100",
    "--canal-labels", "8", "--canal-output-label", "2",
    "--cord-labels", "9", "--cord-output-label", "1",
    "--sacrum-labels", "6", "--sacrum-output-label", "50",
    "--map-input", "7:11",
]
STEP1_LOC_ARGS = [
    "--selected-disc-landmarks", "2", "5",
    "--disc-labels", "1-5",
    "--disc-landmark-labels", "2", "3", "4", "5",
    "--disc-landmark-output-labels", "63", "71", "91", "100",
    "--loc-disc-labels", "63-100",
    "--canal-labels", "8", "--canal-output-label", "2",
    "--cord-labels", "9", "--cord-output-label", "1",
    "--sacrum-labels", "6", "--sacrum-output-label", "50",
    "--map-input", "7:11",
]
STEP2_ARGS = [
    "--selected-disc-landmarks", "2", "5", "3", "4",
    "--disc-labels", "1-5",
    "--disc-landmark-labels", "2", "3", "4", "5",
    "--disc-landmark-output-labels", "63", "71", "91", "100",
    "--vertebrae-labels", "7-9",
    "--vertebrae-landmark-output-labels", "13", "21", "41", "50",
    "--vertebrae-extra-labels", "6",
    "--canal-labels", "10", "--canal-output-label", "2",
    "--cord-labels", "11", "--cord-output-label", "1",
    "--sacrum-labels", "9", "--sacrum-output-label", "50",
]
FILL_ARGS = ["--canal-label", "2", "--cord-label", "1", "--largest-canal", "--largest-cord"]
LEVELS_ARGS = [
    "--canal-labels", "1", "2",
    "--disc-labels", "63-67", "71-82", "91-95", "100",
    "--c1-label", "11", "--c2-label", "50",
]
COMMON_ARGS = ["-r", "-w", "1"]
# fmt: on

ERROR_LINE = re.compile(r"^Error: (?P<path>\S+?), (?P<msg>.*)$")


# --------------------------------------------------------------------------------------------
# Phantom label maps
# --------------------------------------------------------------------------------------------
@dataclass
class Spine:
    """Builds a straight-ish column of boxes from superior to inferior on a 40x40xN RAS grid.

    `step` selects the raw label vocabulary (1: §4.1, 2: §4.2). In step 2 vertebrae alternate
    odd (7) / even (8) by anatomical number, `first_vertebra` being the number (C1 = 1) of the
    first vertebra added. A gentle y-curve per segment keeps the geometry non-trivial.
    """

    step: int
    first_vertebra: int = 1
    cord_stop: float = 0.0  # fraction of the column, from the bottom, without cord (conus)
    parts: list[tuple[str, int, int, dict]] = field(default_factory=list)

    def c1(self, height: int = 4) -> Spine:
        self.parts.append(("c1", 0, height, {}))
        return self

    def vert(self, height: int = 3, **opts) -> Spine:
        self.parts.append(("vert", 0, height, opts))
        return self

    def disc(self, label: int = 1, height: int = 2, **opts) -> Spine:
        self.parts.append(("disc", label, height, opts))
        return self

    def sacrum(self, height: int = 8, **opts) -> Spine:
        self.parts.append(("sacrum", 0, height, opts))
        return self

    def discs(self, labels: list[int], **opts) -> Spine:
        """Alternate vertebra / disc for each disc label, ending with a disc."""
        for label in labels:
            self.vert().disc(label, **opts)
        return self

    def build(self, margin: int = 3) -> tuple[np.ndarray, list[tuple[str, int, slice]]]:
        """Return (uint8 array on the 1 mm RAS grid, [(kind, label, z-slice) top→bottom])."""
        nz = sum(p[2] for p in self.parts) + 2 * margin
        seg = np.zeros((*SHAPE_XY, nz), np.uint8)
        vert_label = {1: (6, 6, 6), 2: (7, 8, 9)}[self.step]
        canal_label, cord_label = {1: (8, 9), 2: (10, 11)}[self.step]
        placed = []
        z_top = nz - margin
        number = self.first_vertebra
        for kind, label, height, opts in self.parts:
            zs = slice(z_top - height, z_top)
            dy = _dy(zs.start, nz)
            x0, x1 = opts.get("x", BODY_X)
            y0, y1 = opts.get("y", (BODY_Y[0] + dy, BODY_Y[1] + dy))
            if kind == "disc":
                value = label
            elif kind == "sacrum":
                value = vert_label[2]
            elif kind == "c1":
                value = 7
                number = 2
            else:
                value = vert_label[0] if self.step == 1 else vert_label[(number + 1) % 2]
                number += 1
            seg[x0:x1, y0:y1, zs] = value
            placed.append((kind, int(value), zs))
            z_top -= height
        z_lo, z_hi = margin, nz - margin
        z_conus = z_lo + int(self.cord_stop * (z_hi - z_lo))
        # The canal runs the whole column and the cord down to the conus, following the curve.
        for z in range(z_lo, z_hi):
            dy = _dy(z, nz)
            seg[slice(*CANAL_X), CANAL_Y[0] + dy : CANAL_Y[1] + dy, z] = canal_label
            if z >= z_conus:
                seg[slice(*CORD_X), CORD_Y[0] + dy : CORD_Y[1] + dy, z] = cord_label
        self._add_dens(seg, placed)
        return seg, placed

    def _add_dens(self, seg: np.ndarray, placed: list[tuple[str, int, slice]]) -> None:
        """The dens of C2 pokes up into C1 (so levels 1/2 find a C2 tip inside C1's z range)."""
        kinds = [p[0] for p in placed]
        if "c1" not in kinds:
            return
        i = kinds.index("c1")
        c1_z, c2_value = placed[i][2], placed[i + 1][1]
        ys = np.nonzero(seg[20, :, c1_z.start] == placed[i][1])[0]
        y_mid = int(ys.mean())
        seg[18:22, y_mid - 2 : y_mid + 2, c1_z.start : c1_z.start + 3] = c2_value


def _dy(z: int, nz: int) -> int:
    """Anterior shift (0..2 voxels) of the column at slice z: a gentle curve."""
    return round(2 * math.sin(math.pi * z / nz))


def _affine() -> np.ndarray:
    return np.eye(4)


def _canal_defects(seg: np.ndarray, step: int) -> None:
    """Holes in the canal, a cord fragment below the conus and a stray canal blob.

    These exercise fill_canal (hole filling, largest cord, largest canal) and, through the stray
    blob, the per-slice canal centreline of iterative_label.
    """
    canal, cord = {1: (8, 9), 2: (10, 11)}[step]
    cord_z = np.nonzero((seg == cord).any(axis=(0, 1)))[0]
    z_conus = int(cord_z.min())
    # Hole: canal voxels around the cord removed on 3 slices above the conus.
    zh = z_conus + 10
    for z in range(zh, zh + 3):
        sl = seg[:, :, z]
        ys = np.nonzero((sl == canal).any(axis=0))[0]
        inner = np.zeros_like(sl, bool)
        inner[CANAL_X[0] + 2 : CANAL_X[1] - 2, ys.min() + 1 : ys.max()] = True
        sl[inner & (sl == canal)] = 0
    # A 3-slice cord fragment 4 slices below the conus (becomes canal with largest_cord).
    zf = z_conus - 7
    for z in range(zf, zf + 3):
        ys = np.nonzero((seg[:, :, z] == canal).any(axis=0))[0]
        y_mid = (int(ys.min()) + int(ys.max())) // 2
        seg[18:22, y_mid - 1 : y_mid + 2, z] = cord
    # Stray canal blob far from the column (removed by largest_canal).
    z0 = seg.shape[2] // 2
    seg[1:4, 34:38, z0 : z0 + 4] = canal


def _body_y_min(seg: np.ndarray, zs: slice, labels: tuple[int, ...]) -> int:
    """Smallest y (most posterior) of the given labels within the z range."""
    return int(np.nonzero(np.isin(seg[:, :, zs], labels).any(axis=(0, 2)))[0].min())


def _final_localizer(
    seg_step1: np.ndarray, placed, disc_names: list[int], shift: int
) -> np.ndarray:
    """A final-label map (as a localizer's step2_output) on the same grid, discs labelled by
    `disc_names` (top→bottom, 0 = leave out), shifted by `shift` voxels in z."""
    loc = np.zeros_like(seg_step1)
    loc[np.isin(seg_step1, (8,))] = 2
    loc[np.isin(seg_step1, (9,))] = 1
    discs = [p for p in placed if p[0] == "disc"]
    for (_, _, zs), name in zip(discs, disc_names, strict=True):
        if name:
            block = np.isin(seg_step1[:, :, zs], (1, 2, 3, 4, 5))
            loc[:, :, zs][block] = name
    return np.roll(loc, shift, axis=2)


@dataclass
class Case:
    name: str
    step: int  # 1 or 2
    description: str
    make: Callable[[], tuple[np.ndarray, np.ndarray | None]]
    uses_loc: bool = False


def _full(middle_landmarks: bool) -> Spine:
    mid = [1] * 21
    if middle_landmarks:
        mid[4] = 3  # C7-T1 is the 6th disc: C2-C3, C3-C4, C4-C5, C5-C6, C6-C7, C7-T1
        mid[16] = 4  # T12-L1 is the 18th disc
    return Spine(1, cord_stop=0.35).c1().vert().disc(2).discs(mid).vert().disc(5).sacrum()


def case_full_landmarks():
    seg, _ = _full(True).build()
    _canal_defects(seg, 1)
    return seg, None


def case_full_no_middle():
    return _full(False).build()[0], None


def case_13_discs():
    return Spine(1).c1().vert().disc(2).discs([1] * 11).vert().disc(5).sacrum().build()[0], None


def case_only_c7t1():
    # C4-C5 .. T5-T6 field of view; C7-T1 is the 4th disc.
    labels = [1, 1, 1, 3, 1, 1, 1, 1, 1, 1]
    return Spine(1, first_vertebra=4).discs(labels).vert().build()[0], None


def case_only_t12l1():
    # T8-T9 .. L3-L4; T12-L1 is the 5th disc; no sacrum.
    labels = [1, 1, 1, 1, 4, 1, 1, 1]
    return Spine(1, first_vertebra=15).discs(labels).vert().build()[0], None


def case_lumbar_l5s():
    # T10-T11 .. L5-S, no T12-L1 landmark.
    sp = Spine(1, first_vertebra=17, cord_stop=0.7).discs([1] * 7 + [5]).sacrum()
    return sp.build()[0], None


def case_missing_middle_disc():
    mid = [1] * 20
    sp = Spine(1).c1().vert().disc(2).discs(mid[:9]).vert(height=8)
    sp.disc(1).discs(mid[10:]).vert().disc(5).sacrum()
    return sp.build()[0], None


def case_six_lumbar():
    # C5-C6, C6-C7, C7-T1 (landmark), 11 thoracic, T12-L1 (landmark), 5 lumbar, L5-S (landmark).
    labels = [1, 1, 3] + [1] * 11 + [4] + [1] * 5 + [5]
    return Spine(1, first_vertebra=5).discs(labels).sacrum().build()[0], None


def _lumbar_with_sacral_disc(sacral_disc_xy: tuple[tuple[int, int], tuple[int, int]], big: bool):
    sp = Spine(1, first_vertebra=17).discs([1, 4, 1, 1, 1, 1]).vert()
    if big:  # a large L5-S so that a >= 200-voxel sacral component is <= 10 % of it
        sp.disc(5, height=4, x=(5, 35), y=(18, 38))
    else:
        sp.disc(5)
    sp.sacrum(height=10)
    seg, placed = sp.build()
    zs = placed[-1][2]
    (x0, x1), (y0, y1) = sacral_disc_xy
    z = zs.start + 4
    seg[x0:x1, y0:y1, z] = 1  # spurious one-slice disc inside the sacrum
    return seg, None


def case_sacral_disc_drops_l5s():
    return _lumbar_with_sacral_disc(((12, 28), (18, 32)), big=False)


def case_sacral_disc_keeps_l5s():
    return _lumbar_with_sacral_disc(((12, 28), (18, 31)), big=True)


def case_localizer():
    # No landmark in the segmentation; the localizer names the 2nd disc C7-T1.
    sp = Spine(1, first_vertebra=6).discs([1] * 10).vert()
    seg, placed = sp.build()
    loc = _final_localizer(seg, placed, [67, 71, 72, 73, 74, 75, 76, 77, 78, 79], shift=0)
    return seg, loc


def case_localizer_fallback():
    # The localizer has no landmark disc over the segmentation's discs: the most superior disc
    # overlapping a localizer disc takes that disc's label (majority, loc shifted 1 voxel).
    sp = Spine(1, first_vertebra=6).discs([1] * 10).vert()
    seg, placed = sp.build()
    loc = _final_localizer(seg, placed, [0, 0, 72, 73, 74, 75, 76, 77, 78, 79], shift=-1)
    return seg, loc


def case_no_landmark():
    return Spine(1, first_vertebra=6).discs([1] * 8).vert().build()[0], None


def case_step2_full():
    mid = [1] * 21
    sp = Spine(2, cord_stop=0.35).c1().vert().disc(2).discs(mid).vert().disc(5).sacrum()
    seg, placed = sp.build()
    # A generic-vertebra (6) posterior stub attached to the 10th vertebra, and the 15th
    # vertebra split into two same-parity fragments (both >= 200 voxels).
    verts = [p for p in placed if p[0] == "vert"]
    zs = verts[9][2]
    y0 = _body_y_min(seg, zs, (7, 8))
    seg[14:26, y0 - 2 : y0, zs] = 6
    zs = verts[14][2]
    seg[18:21, :, zs][np.isin(seg[18:21, :, zs], (7, 8))] = 0
    _canal_defects(seg, 2)
    return seg, None


def case_step2_lumbar():
    # T9 .. sacrum, L5-S landmark; a label-6 blob touching one vertebra (joins it) and one
    # 2 voxels away from another (stays unlabelled).
    sp = Spine(2, first_vertebra=16, cord_stop=0.6).discs([1] * 8 + [5]).sacrum()
    seg, placed = sp.build()
    verts = [p for p in placed if p[0] == "vert"]
    seg[28:31, 20:30, verts[3][2]] = 6
    seg[30:33, 20:30, verts[6][2]] = 6
    return seg, None


# fmt: off
CASES = [
    Case("s1_full_23_landmarks", 1, "23 discs, C2-C3 (2) top, C7-T1/T12-L1 in place, L5-S (5) "
         "bottom, C1 with dens, sacrum, conus; canal holes, cord fragment, stray canal blob",
         case_full_landmarks),
    Case("s1_full_23_no_middle", 1, "23 discs, C2-C3 top and L5-S bottom only",
         case_full_no_middle),
    Case("s1_13_discs", 1, "13 discs between C2-C3 and L5-S (L5-S re-anchors: gap)", case_13_discs),
    Case("s1_only_c7t1", 1, "C4-C5..T5-T6, only C7-T1 landmark (4th disc)", case_only_c7t1),
    Case("s1_only_t12l1", 1, "T8-T9..L3-L4, only T12-L1 landmark (5th disc)", case_only_t12l1),
    Case("s1_lumbar_l5s", 1, "T10-T11..L5-S, lumbar-only with L5-S landmark", case_lumbar_l5s),
    Case("s1_missing_middle_disc", 1, "22 discs C2-C3..L5-S, one thoracic disc missing (tall "
         "vertebra)", case_missing_middle_disc),
    Case("s1_six_lumbar", 1, "C5-C6..L5-S with C7-T1, T12-L1, L5-S and 6 lumbar discs below "
         "T12-L1", case_six_lumbar),
    Case("s1_sacral_disc_drops_l5s", 1, "lumbar FOV with T12-L1 and L5-S; a spurious sacral disc "
         "component > 10 % of L5-S drops the L5-S landmark", case_sacral_disc_drops_l5s),
    Case("s1_sacral_disc_keeps_l5s", 1, "lumbar FOV with T12-L1 and a large L5-S; a spurious "
         "sacral disc component <= 10 % of L5-S keeps it", case_sacral_disc_keeps_l5s),
    Case("s1_localizer", 1, "no landmark in seg; final-label localizer maps the 2nd disc to "
         "C7-T1 (71); run with the --loc arguments", case_localizer, uses_loc=True),
    Case("s1_localizer_fallback", 1, "no landmark in seg; localizer (shifted 1 voxel) has only "
         "non-landmark discs: most superior overlapping disc takes its label",
         case_localizer_fallback, uses_loc=True),
    Case("s1_no_landmark", 1, "8 generic discs, no landmark, no localizer: expected failure",
         case_no_landmark),
    Case("s2_full", 2, "step-2 map C1..sacrum with odd/even vertebrae, C2-C3 and L5-S, a "
         "generic-vertebra stub, a split vertebra, canal defects", case_step2_full),
    Case("s2_lumbar", 2, "step-2 map T9..sacrum, L5-S landmark, label-6 blobs touching and "
         "not touching a vertebra",
         case_step2_lumbar),
]
# fmt: on


# --------------------------------------------------------------------------------------------
# Running the reference
# --------------------------------------------------------------------------------------------
def _run(refenv: Path, script: str, args: list[str], work: Path) -> tuple[str, dict[str, str]]:
    """Run one reference console script; return (stdout+stderr, {file name: error message})."""
    env = dict(os.environ, HOME=str(work / "home"), TMPDIR=str(work / "tmp"), OMP_NUM_THREADS="1")
    (work / "home").mkdir(exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    cmd = [str(refenv / "bin" / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    log = proc.stdout + proc.stderr
    errors = {}
    for line in log.splitlines():
        m = ERROR_LINE.match(line.strip())
        if m:
            errors[Path(m["path"]).name] = m["msg"]
    if proc.returncode != 0:
        raise RuntimeError(f"{script} exited {proc.returncode}:\n{log[-2000:]}")
    return log, errors


def _save(path: Path, data: np.ndarray) -> None:
    img = nib.Nifti1Image(data.astype(np.uint8), _affine())
    img.set_data_dtype(np.uint8)
    img.set_qform(_affine(), code=1)
    img.set_sform(_affine(), code=1)
    nib.save(img, path)


def _load(path: Path) -> np.ndarray | None:
    return np.asanyarray(nib.load(path).dataobj).astype(np.uint8) if path.exists() else None


def _command_text(script: str, args: list[str]) -> str:
    return " ".join([script, *args])


def generate(refenv: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tss_goldens_"))
    try:
        groups = {
            "step1": (STEP1_ARGS, [c for c in CASES if c.step == 1 and not c.uses_loc]),
            "step1_loc": (STEP1_LOC_ARGS, [c for c in CASES if c.uses_loc]),
            "step2": (STEP2_ARGS, [c for c in CASES if c.step == 2]),
        }
        inputs: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        results = {}
        for group, (args, cases) in groups.items():
            seg_dir, lab_dir = work / f"{group}_in", work / f"{group}_labeled"
            fill_dir, lev_dir = work / f"{group}_filled", work / f"{group}_levels"
            seg_dir.mkdir()
            loc_dir = work / f"{group}_locs"
            for case in cases:
                seg, loc = case.make()
                inputs[case.name] = (seg, loc)
                _save(seg_dir / f"{case.name}.nii.gz", seg)
                if loc is not None:
                    loc_dir.mkdir(exist_ok=True)
                    _save(loc_dir / f"{case.name}.nii.gz", loc)
            label_args = ["-s", "{in}", "-o", "{out}"]
            run_args = ["-s", str(seg_dir), "-o", str(lab_dir)]
            if loc_dir.exists():
                label_args += ["-l", "{locs}"]
                run_args += ["-l", str(loc_dir)]
            _, errors = _run(
                refenv, "totalspineseg_iterative_label", run_args + args + COMMON_ARGS, work
            )
            fill_errors, lev_errors = {}, {}
            if lab_dir.exists() and any(lab_dir.iterdir()):
                _, fill_errors = _run(
                    refenv,
                    "totalspineseg_fill_canal",
                    ["-s", str(lab_dir), "-o", str(fill_dir), *FILL_ARGS, *COMMON_ARGS],
                    work,
                )
                if group != "step2":
                    _, lev_errors = _run(
                        refenv,
                        "totalspineseg_extract_levels",
                        ["-s", str(fill_dir), "-o", str(lev_dir), *LEVELS_ARGS, *COMMON_ARGS],
                        work,
                    )
            commands = {
                "iterative_label": _command_text(
                    "totalspineseg_iterative_label", label_args + args + COMMON_ARGS
                ),
                "fill_canal": _command_text(
                    "totalspineseg_fill_canal", ["-s", "{out}", "-o", "{filled}", *FILL_ARGS]
                ),
            }
            if group != "step2":
                commands["extract_levels"] = _command_text(
                    "totalspineseg_extract_levels",
                    ["-s", "{filled}", "-o", "{levels}", *LEVELS_ARGS],
                )
            for case in cases:
                fname = f"{case.name}.nii.gz"
                seg, loc = inputs[case.name]
                arrays: dict[str, np.ndarray] = {"seg": seg, "affine": _affine()}
                if loc is not None:
                    arrays["loc"] = loc
                expected = _load(lab_dir / fname)
                message = errors.get(fname)
                if expected is None and message is None:
                    message = "no output file and no Error line"
                arrays["failed"] = np.bool_(expected is None)
                if expected is None:
                    arrays["message"] = np.str_(message)
                else:
                    arrays["expected"] = expected
                    filled = _load(fill_dir / fname)
                    if filled is not None:
                        arrays["filled_expected"] = filled
                    levels = _load(lev_dir / fname)
                    if levels is not None:
                        arrays["levels_expected"] = levels
                np.savez_compressed(out / f"{case.name}.npz", **arrays)
                results[case.name] = {
                    "step": case.step,
                    "description": case.description,
                    "shape": list(seg.shape),
                    "uses_localizer": case.uses_loc,
                    "failed": expected is None,
                    "message": message if expected is None else None,
                    "expected_labels": (
                        sorted(int(v) for v in np.unique(expected) if v)
                        if expected is not None
                        else []
                    ),
                    "levels": _levels_summary(_load(lev_dir / fname)),
                    "fill_canal_error": fill_errors.get(fname),
                    "extract_levels_error": lev_errors.get(fname),
                    "commands": commands,
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "reference": REFERENCE,
        "how": "python benchmarks/make_labeling_goldens.py --refenv /work/refenv",
        "notes": [
            "Inputs are uint8 raw maps on a 1 mm RAS grid (affine = identity): axis 0 = x (R), "
            "axis 1 = y (anterior), axis 2 = z (superior).",
            "iterative_label uses the PyPI 20260807 built-in min_component_size=200 (no CLI flag).",
            "filled_expected = fill_canal(expected); levels_expected = extract_levels("
            "filled_expected), the pipeline order (docs/method.md §1.4 steps 14 and 20).",
            "{in}/{out}/{locs}/{filled}/{levels} are folders; localizer files share the "
            "segmentation's file name.",
        ],
        "npz_arrays": {
            "seg": "input raw map (uint8)",
            "loc": "localizer final-label map (only with uses_localizer)",
            "affine": "4x4 voxel-to-world of every array",
            "failed": "bool; True when the reference wrote no output",
            "message": "reference Error message (only when failed)",
            "expected": "iterative_label output (absent when failed)",
            "filled_expected": "fill_canal(expected)",
            "levels_expected": "extract_levels(filled_expected), step-1 cases only",
        },
        "cases": results,
    }
    (out / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _levels_summary(levels: np.ndarray | None) -> dict[str, list[int]] | None:
    """{level value: [x, y, z]} of each single-voxel level marker."""
    if levels is None:
        return None
    return {
        str(int(v)): [int(c[0]) for c in np.nonzero(levels == v)] for v in np.unique(levels) if v
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refenv",
        type=Path,
        default=Path("/work/refenv"),
        help="virtual environment made by benchmarks/reference_env.sh",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/labeling/golden"
    )
    args = parser.parse_args(argv)
    if not (args.refenv / "bin" / "totalspineseg_iterative_label").exists():
        print(
            f"error: {args.refenv} has no reference tool; run benchmarks/reference_env.sh",
            file=sys.stderr,
        )
        return 2
    manifest = generate(args.refenv, args.out)
    for name, res in manifest["cases"].items():
        state = f"FAILED ({res['message']})" if res["failed"] else res["expected_labels"]
        print(f"{name}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
