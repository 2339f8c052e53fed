"""Test helpers for the BIDS layer and the CLI: tiny BIDS datasets, fake weights, fake engine.

The fake engine returns label images on the input grid with a few real label values, so the
writer, the stamps and the validator see what the real engine would hand over, in
milliseconds and without torch.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import EngineError, EngineResult

SHAPE = (8, 10, 12)
# What the real engine reports when step-1 labeling finds no landmark disc.
NO_LANDMARK = (
    "step 1 labeling: no landmark disc (C2-C3, C7-T1, T12-L1 or L5-S) found and no localizer "
    "given: levels cannot be assigned; use a localizer (--localizer-suffix, or --loc for "
    "`spineseg segment`) or --assume-top-disc (e.g. C2-C3 when the scan starts at C1)"
)

# Relative paths of the default tiny dataset: one subject with two sessions and two contrasts,
# one without sessions, with acq-/run- entities to check that names keep them.
DEFAULT_IMAGES = (
    "sub-01/ses-01/anat/sub-01_ses-01_acq-sag_T2w.nii.gz",
    "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
    "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_T2w.nii.gz",
    "sub-02/anat/sub-02_run-1_T2w.nii.gz",
    "sub-02/anat/sub-02_T1w.nii.gz",
)


def tiny_image(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> nib.Nifti1Image:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 200, size=shape).astype(np.int16)
    affine = np.diag([0.8, 0.9, 1.2, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    return img


def make_bids(root: Path, images: Iterable[str] = DEFAULT_IMAGES) -> Path:
    """A small raw BIDS dataset (valid for bids-validator-deno) with the given image paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "tiny",
                "BIDSVersion": "1.10.1",
                "DatasetType": "raw",
                "License": "CC0",
                "Authors": ["A. Tester", "B. Tester"],
            }
        )
    )
    (root / "README").write_text("A tiny synthetic dataset for the SpineSeg tests.\n" * 5)
    subjects = set()
    for i, rel in enumerate(images):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(tiny_image(seed=i), path)
        subjects.add(rel.split("/")[0])
    rows = "".join(f"{s}\n" for s in sorted(subjects))
    (root / "participants.tsv").write_text("participant_id\n" + rows)
    return root


def tree_digest(root: Path) -> str:
    """Hash of every path, mode and content under root (to prove inputs are untouched)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def make_weights(root: Path) -> Path:
    """Fake weight folders in the official layout, enough for `resolve_weights` to verify."""
    for ds, payload in (
        ("Dataset101_TotalSpineSeg_step1", b"one"),
        ("Dataset102_TotalSpineSeg_step2", b"two"),
    ):
        trainer = root / ds / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        (trainer / "fold_0").mkdir(parents=True, exist_ok=True)
        (trainer / "plans.json").write_text("{}")
        (trainer / "dataset.json").write_text("{}")
        fake_checkpoint(trainer / "fold_0" / "checkpoint_final.pth", payload)
    return root


def fake_checkpoint(path: Path, payload: bytes) -> None:
    """A zip like torch.save's (the format weights are checked for), holding `payload`."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("checkpoint_final/data.pkl", payload)
        zf.writestr("checkpoint_final/version", b"3\n")


def fake_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Labels on the input grid: cord, canal, two vertebrae and the disc between them."""
    x, y, z = shape[:3]
    lab = np.zeros((x, y, z), np.uint8)
    lab[x // 2, y // 2, :] = 1
    lab[x // 2 + 1, y // 2, :] = 2
    lab[1:3, 1:3, : z // 2 - 1] = 13
    lab[1:3, 1:3, z // 2 - 1 : z // 2 + 1] = 64
    lab[1:3, 1:3, z // 2 + 1 :] = 12
    return lab


class FakeEngine:
    """Stands in for SpineSegEngine: same call, same result shapes, no network.

    `fail` holds file names for which `segment` raises EngineError, `partial` those whose
    step-1 labeling finds no landmark (cord and canal only, as the real engine returns), and
    `raises` maps file names to any other exception to raise; `delay` seconds of "network"
    per image (reported through `progress`, as the real engine does); `calls` records
    (name, loc given) in call order and `top_discs` the assumed top disc of each call.
    """

    def __init__(
        self,
        weights=None,
        device: str = "cpu",
        threads: int | None = None,
        fail: Iterable[str] = (),
        partial: Iterable[str] = (),
        raises: Mapping[str, BaseException] | None = None,
        delay: float = 0.0,
    ):
        self.weights, self.device, self.threads = weights, device, threads
        self.fail, self.partial = set(fail), set(partial)
        self.raises = dict(raises or {})
        self.delay = delay
        self.active = self.peak = 0  # images inside segment() at once, and the most seen
        self._lock = threading.Lock()
        self.calls: list[tuple[str, bool]] = []
        self.top_discs: list[int | None] = []

    def segment(self, img, options: SegmentOptions, *, loc=None, name="", progress=None):
        step1_only = options.step1_only
        self.calls.append((name, loc is not None))
        self.top_discs.append(options.assume_top_disc)
        if name in self.fail:
            raise EngineError(f"{name}: step 1 found no spine structure in the image")
        if name in self.raises:
            raise self.raises[name]
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if progress:
                progress("step1_network")
            time.sleep(self.delay)
            if progress:
                progress("step1_labeling")
        finally:
            with self._lock:
                self.active -= 1
        data = np.asanyarray(img.dataobj)  # reads the data, as the real engine does
        labels = fake_labels(data.shape)
        res = EngineResult(device=self.device)
        if name in self.partial:
            res.errors.append(NO_LANDMARK)
            res.native = {
                k: v for k, v in self._images(labels, img.affine, True).items() if k != "levels"
            }
            return res
        res.native = self._images(labels, img.affine, step1_only)
        if options.iso:
            res.iso = self._images(labels, np.eye(4), step1_only)
        res.landmarks = {"step1": ["C2-C3"]} | ({} if step1_only else {"step2": ["C2-C3"]})
        res.timings = {"step1_network": 0.01}
        return res

    def close(self, cancel: bool = False) -> None:
        self.closed = True

    @staticmethod
    def _images(labels: np.ndarray, affine: np.ndarray, step1_only: bool) -> dict:
        step1 = np.where(labels >= 11, np.where(labels < 60, 50, labels), labels).astype(np.uint8)
        levels = np.zeros_like(labels)
        levels[1, 1, labels.shape[2] // 2] = 4
        out = {
            "step1": nib.Nifti1Image(step1, affine),
            "levels": nib.Nifti1Image(levels, affine),
            "cord_soft": nib.Nifti1Image((labels == 1).astype(np.float32) * 0.9, affine),
            "canal_soft": nib.Nifti1Image((labels <= 2).astype(np.float32) * 0.8, affine),
        }
        if not step1_only:
            out["final"] = nib.Nifti1Image(labels, affine)
        for img in out.values():
            img.header.set_xyzt_units("mm")
        return out


class FakeEngineFactory:
    """Engine factory for `main(engine_factory=...)` that remembers the engines it made."""

    def __init__(
        self,
        fail: Iterable[str] = (),
        partial: Iterable[str] = (),
        raises: Mapping[str, BaseException] | None = None,
        delay: float = 0.0,
    ):
        self.fail, self.partial, self.raises = set(fail), set(partial), dict(raises or {})
        self.delay = delay
        self.engines: list[FakeEngine] = []

    def __call__(self, weights, device, threads):
        engine = FakeEngine(
            weights,
            device if isinstance(device, str) else device[0],  # what a result names: one device
            threads,
            fail=self.fail,
            partial=self.partial,
            raises=self.raises,
            delay=self.delay,
        )
        self.engines.append(engine)
        return engine

    @property
    def calls(self) -> list[tuple[str, bool]]:
        return [c for e in self.engines for c in e.calls]
