"""A small raw BIDS dataset of phantoms, with the ground truth kept outside the raw data.

Layout: `<out>/sub-*/[ses-*/]anat/*_T2w.nii.gz|*_T1w.nii.gz` (raw, valid BIDS) and
`<out>/derivatives/truth/` (a derivative dataset holding the exact labels of each image).
Used by `make demo`, the tests and the container test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app import __version__
from bids_app.phantom.anatomy import Anatomy, Deformity, Slip, random_anatomy
from bids_app.phantom.lesions import lesion_truth, random_lesions
from bids_app.phantom.render import Acquisition, Phantom, fov_s_range, render
from bids_app.phantom.vertebrae import calibrated, column_truth, part_truth


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


# What the BIDS validator recommends for a raw dataset and its anatomical sidecars, filled so
# that `make demo` shows no validator warning about the project's own data (users' datasets
# keep theirs). The acquisition fields are a nominal sagittal TSE protocol: the renderer draws
# intensities per tissue and simulates no sequence, as the README says.
README = """Synthetic spine MRI phantoms made by `spineseg phantoms` (SpineSeg). Not real subjects
and not real scans: each image is rendered from a random anatomy (vertebrae, discs, cord,
canal) with per-tissue intensities, partial volume, Rician noise and a bias field.

The acquisition fields of the sidecars (echo time, flip angle, sequence...) are nominal
values of a sagittal turbo spin echo protocol, written so that the files are complete BIDS;
the images were not simulated from them. Exact labels of every image are in
derivatives/truth/. participants.tsv gives the anatomy seed of each subject.
"""
PARTICIPANTS_SIDECAR = {
    "phantom_seed": {
        "Description": "random seed of the subject's synthetic anatomy (spineseg phantoms)"
    }
}
_NOMINAL_COMMON = {
    "Manufacturer": "SpineSeg phantom",
    "ManufacturersModelName": "spineseg phantoms",
    "DeviceSerialNumber": "none (synthetic)",
    "StationName": "none (synthetic)",
    "SoftwareVersions": f"spineseg {__version__}",
    "InstitutionName": "none (synthetic)",
    "InstitutionAddress": "none (synthetic)",
    "InstitutionalDepartmentName": "none (synthetic)",
    "MagneticFieldStrength": 3,
    "ReceiveCoilName": "none (synthetic)",
    "ReceiveCoilActiveElements": "none (synthetic)",
    "MatrixCoilMode": "none (synthetic)",
    "CoilCombinationMethod": "none (synthetic)",
    "NonlinearGradientCorrection": False,
    "MRAcquisitionType": "3D",
    "ScanningSequence": "SE",
    "SequenceVariant": "SK",
    "SequenceName": "nominal TSE (not simulated)",
    "PulseSequenceType": "Turbo spin echo (nominal; intensities not simulated)",
    "PulseSequenceDetails": "none: intensities are drawn per tissue, no sequence is simulated",
    "DwellTime": 1e-05,
}
NOMINAL_ACQUISITION = {
    "T2w": {**_NOMINAL_COMMON, "EchoTime": 0.1, "RepetitionTime": 3.0, "FlipAngle": 90},
    "T1w": {**_NOMINAL_COMMON, "EchoTime": 0.01, "RepetitionTime": 0.6, "FlipAngle": 90},
}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class BodyTruth:
    """What the vertebral-body truth is written with: the deformities and slips every subject
    gets, SpineSeg's part ids, endplate thickness and height positions (passed in from
    `bids_app.vertebrae`, which this layer does not import)."""

    deformities: tuple[Deformity, ...]
    slips: tuple[Slip, ...]
    part_ids: Mapping[str, int]
    endplate_mm: float
    height_shares: Mapping[str, float]


def _deformed(seed: int, slips: tuple[Slip, ...], deformities: tuple[Deformity, ...]) -> Anatomy:
    return random_anatomy(seed, deformities=deformities, slips=slips)


def _write_body_truth(folder: Path, stem: str, ph: Phantom, bodies: BodyTruth) -> None:
    """Subregion labels of one image and the column's body and slip truth beside them."""
    nib.save(part_truth(ph, bodies.part_ids, bodies.endplate_mm), folder / f"{stem}_dseg.nii.gz")
    anat = ph.anatomy
    s0, s1 = fov_s_range(anat, ph.acquisition.fov)
    truth = column_truth(anat, bodies.height_shares)
    for item in truth["bodies"]:
        seg = anat.segment(item["label"])
        item["in_field_of_view"] = bool(s0 < seg.s_top and seg.s_bot < s1)
    _write_json(
        folder / f"{stem}_dseg.json",
        {
            "Description": "Phantom vertebral subregions (SpineSeg's seg-vertparts ids) and "
            "the truth of every body (heights in mm along the column at the AP shares of "
            "HeightShares from the posterior wall, read on the renderer's own labels; the "
            "graders' ratios; the deformity drawn: shape, Genant grade asked, height loss "
            "drawn) and every disc (slip of the upper body's posterior-inferior corner over "
            "the lower body's posterior-superior corner, mm and % of the lower body's depth)",
            "HeightShares": dict(bodies.height_shares),
            "Deformities": [vars(d) | {"loss": d.fraction} for d in anat.deformities],
            "Slips": [vars(x) for x in anat.slips],
            "Bodies": truth["bodies"],
            "Discs": truth["discs"],
        },
    )


def write_phantom_dataset(
    out: Path,
    n_subjects: int = 3,
    seed: int = 7000,
    lesions: bool = False,
    bodies: BodyTruth | None = None,
) -> list[Path]:
    """Write the dataset; returns the raw image paths. Seeds are outside the training range.

    With `lesions`, each subject's cord gets 0-3 lesions (drawn from its seed, the same in
    all its images); their truth goes to derivatives/truth: a lesion mask per image and a
    JSON of every lesion's measures. With `bodies`, every subject gets its deformities
    (calibrated to their grades) and slips; derivatives/truth gets the subregion labels per
    image and a JSON of every body's heights, ratios and deformity and every disc's slip.
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
            "Authors": ["SpineSeg developers", "spineseg phantoms (synthetic data generator)"],
            "HEDVersion": "8.3.0",
            "SourceDatasets": [
                {"URL": "none: rendered by spineseg phantoms, no scan used", "Version": __version__}
            ],
            "GeneratedBy": [{"Name": "spineseg phantoms", "Version": __version__}],
        },
    )
    (out / "README").write_text(README)
    _write_json(out / "participants.json", PARTICIPANTS_SIDECAR)
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
        if bodies is not None and (bodies.deformities or bodies.slips):
            draw = partial(_deformed, subject_seed, bodies.slips)
            anat = calibrated(draw, bodies.deformities, bodies.height_shares)
        else:
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
                **NOMINAL_ACQUISITION[contrast],
                "SeriesDescription": f"synthetic {contrast} {plan.acquisition.fov}; acquisition "
                "fields are nominal (see README)",
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
        if bodies is not None and (anat.deformities or anat.slips):
            _write_body_truth(truth / rel, f"{stem}_seg-truthvertparts_desc-{contrast}", ph, bodies)
        written.append(path)
    rows = [f"sub-{sub}\t{sd}" for sub, sd in sorted(participants.items())]
    (out / "participants.tsv").write_text("participant_id\tphantom_seed\n" + "\n".join(rows) + "\n")
    return written
