"""A small raw BIDS dataset of phantoms, with the ground truth kept outside the raw data.

Layout: `<out>/sub-*/[ses-*/]anat/*_T2w.nii.gz|*_T1w.nii.gz` (raw, valid BIDS) and
`<out>/derivatives/truth/` (a derivative dataset holding the exact labels of each image).
Used by `make demo`, the tests and the container test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app import __version__
from bids_app.phantom.anatomy import random_anatomy
from bids_app.phantom.lesions import lesion_truth, random_lesions
from bids_app.phantom.render import Acquisition, render


@dataclass(frozen=True)
class ScanPlan:
    """One image of the phantom dataset."""

    subject: str
    session: str | None
    acq: str
    acquisition: Acquisition


def default_plan(n_subjects: int = 3) -> list[ScanPlan]:
    """Small fields of view so the whole demo runs in minutes on a laptop CPU.

    sub-01 has two sessions; orientations and voxel sizes vary like real sites do.
    """
    sag, ax = 48.0, 90.0  # left-right extent (mm): a sagittal slab, a narrow axial FOV

    def scan(
        sub: str,
        ses: str | None,
        acq: str,
        fov: str,
        voxel: str,
        codes: str,
        contrast: str,
        oblique: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> ScanPlan:
        return ScanPlan(
            sub,
            ses,
            acq,
            Acquisition(fov, voxel, codes, oblique, contrast, ax if voxel == "ax4" else sag),
        )

    # Small fields of view from C1 down: the demo models number them from the C7-T1 (or
    # C2-C3) disc they find, as a user's run would (bids_app/demo_models/README.md).
    plans = [
        scan("01", "01", "sag", "cervical", "iso1", "PSR", "T2w"),
        scan("01", "01", "sag", "cervicothoracic", "iso1", "RAS", "T1w"),
        scan("01", "02", "sag", "cervical", "iso1", "LPI", "T2w"),
        scan("02", None, "sag", "cervical", "sag3", "PSR", "T2w"),
        scan("02", None, "sag", "cervical", "iso1", "LAS", "T1w"),
        scan("03", None, "ax", "cervical", "ax4", "LPS", "T2w"),
        scan("03", None, "sag", "cervical", "iso1", "RAS", "T2w", (6.0, 0.0, 4.0)),
    ]
    subjects = sorted({p.subject for p in plans})[:n_subjects]
    extra = [
        scan(
            f"{i:02d}",
            None,
            "sag",
            "cervical" if i % 2 else "cervicothoracic",
            "iso1",
            "RAS",
            "T2w",
        )
        for i in range(4, n_subjects + 1)
    ]
    return [p for p in plans if p.subject in subjects] + extra


DEMO_LESION_LEVELS = ("C3", "C4", "C5", "C6", "C7", "T1")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_phantom_dataset(
    out: Path, n_subjects: int = 3, seed: int = 7000, lesions: bool = False
) -> list[Path]:
    """Write the dataset; returns the raw image paths. Seeds are outside the training range.

    With `lesions`, each subject's cord gets 0-3 lesions (drawn from its seed, the same in
    all its images); their truth goes to derivatives/truth: a lesion mask per image and a
    JSON of every lesion's measures.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(
        out / "dataset_description.json",
        {
            "Name": "SpineSeg synthetic spine phantoms",
            "BIDSVersion": "1.10.1",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["SpineSeg developers"],
            "GeneratedBy": [{"Name": "spineseg phantoms", "Version": __version__}],
        },
    )
    (out / "README").write_text(
        "Synthetic spine MRI phantoms made by `spineseg phantoms`. Not real subjects.\n"
        "Exact labels of every image are in derivatives/truth/.\n"
    )
    truth = out / "derivatives" / "truth"
    _write_json(
        truth / "dataset_description.json",
        {
            "Name": "Phantom ground truth",
            "BIDSVersion": "1.10.1",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "spineseg phantoms", "Version": __version__}],
        },
    )
    participants: dict[str, int] = {}
    written: list[Path] = []
    for k, plan in enumerate(default_plan(n_subjects)):
        subject_seed = seed + int(plan.subject)
        participants[plan.subject] = subject_seed
        anat = random_anatomy(subject_seed)
        if lesions:
            # Levels every demo field of view holds (they all start at C1).
            rng = np.random.default_rng(subject_seed)
            anat.lesions = random_lesions(rng, anat, levels=DEMO_LESION_LEVELS)
        ph = render(anat, plan.acquisition, noise_seed=seed + 100 + k)
        ses = f"_ses-{plan.session}" if plan.session else ""
        rel = Path(f"sub-{plan.subject}") / (f"ses-{plan.session}" if plan.session else "") / "anat"
        stem = f"sub-{plan.subject}{ses}_acq-{plan.acq}"
        contrast = plan.acquisition.contrast
        path = out / rel / f"{stem}_{contrast}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(ph.image, path)
        _write_json(
            path.with_name(f"{stem}_{contrast}.json"),
            {
                "Manufacturer": "SpineSeg phantom",
                "MagneticFieldStrength": 3,
                "SeriesDescription": f"synthetic {contrast} {plan.acquisition.fov}",
            },
        )
        (truth / rel).mkdir(parents=True, exist_ok=True)
        nib.save(ph.labels, truth / rel / f"{stem}_seg-truth_desc-{contrast}_dseg.nii.gz")
        if lesions:
            mask = truth / rel / f"{stem}_label-lesion_desc-{contrast}_mask.nii.gz"
            nib.save(ph.lesions, mask)
            _write_json(
                mask.with_name(mask.name.removesuffix(".nii.gz") + ".json"),
                {
                    "Description": "Phantom lesions: the value is the lesion's number "
                    "(1-based index in Lesions); truth measured on the continuous shapes",
                    "Lesions": [
                        {**ph.meta["lesions"][i], **lesion_truth(anat, i)}
                        for i in range(len(anat.lesions))
                    ],
                },
            )
        written.append(path)
    rows = [f"sub-{sub}\t{sd}" for sub, sd in sorted(participants.items())]
    (out / "participants.tsv").write_text("participant_id\tphantom_seed\n" + "\n".join(rows) + "\n")
    return written
