"""Train the demo lesion model on phantoms with cord lesions, reproducibly, on CPU.

    python -m training.lesion_model.train all --work /tmp/spineseg-lesion --threads 1

Stages: `data` renders phantoms with 0-3 cord lesions each and writes the nnU-Net raw
dataset in SCIseg V2's label layout (region-based: "sc" = [1, 2], "lesion" = 2) from
exactly the input the runtime gives the lesion model (`bids_app.lesions.run.model_input`:
RAS, 1 mm, cropped to the canal + 16 mm); `plan` runs nnU-Net's fingerprint and planner
and shrinks the network for CPU training; `train` runs nnU-Net's trainer (schedule and
optimiser changed only); `export` writes SCIseg's layout (`<trainer>__<plans>__3d_fullres/
fold_0/checkpoint_final.pth`, optimiser state stripped) with a SHA-256 manifest into
bids_app/demo_models/lesion/. Training anatomy seeds are 3000-3999 (the spine demo models
use 1000-1999; benchmarks use >= 6000). Not part of the installed package: run it from the
repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.engine.geometry import image_like, labels_onto
from bids_app.lesions.run import model_input
from bids_app.lesions.weights import install_lesion_model
from bids_app.phantom.anatomy import random_anatomy
from bids_app.phantom.lesions import random_lesions
from bids_app.phantom.render import Acquisition, render
from bids_app.plumbing import labels as L
from training.nnunet_cpu import (
    STOCK_TRAINER,
    Schedule,
    cpu_trainer,
    export_checkpoint,
    shrink_plans,
    use_work_folder,
    write_split,
)

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "bids_app" / "demo_models" / "lesion"
NAME = "model_lesion_demo"
DATASET = "Dataset201_SpineSegLesionDemo"
MASTER_SEED = 20261206
SEED_BASE = 3000
N_CASES = 48
# 1 mm (lesions are a few mm wide); a patch of 48 x 40 x 40 mm (S, A, R) holds the cord
# and a whole lesion of up to 30 mm.
SPACING = [1.0, 1.0, 1.0]
PATCH = [48, 40, 40]
FEATURES = [8, 16, 32, 64]
EPOCHS = 30
ITERS = 50
LR = 2e-3
LABELS = {"background": 0, "sc": [1, 2], "lesion": 2}  # SCIseg V2's dataset.json labels


def case_acquisition(i: int) -> tuple[int, Acquisition, np.random.Generator]:
    """Anatomy seed, acquisition and lesion generator of training case i."""
    rng = np.random.default_rng(MASTER_SEED + i)
    fov = str(rng.choice(["cervical", "cervicothoracic", "thoracic"], p=[0.4, 0.4, 0.2]))
    voxel = str(rng.choice(["iso1", "sag3"], p=[0.75, 0.25]))
    oblique = tuple(float(v) for v in rng.uniform(-10, 10, 3)) if rng.random() < 0.2 else (0, 0, 0)
    acq = Acquisition(
        fov=fov,
        voxel=voxel,
        oblique_deg=oblique,
        contrast="T2w",
        lr_extent=float(rng.uniform(40, 70)),
        snr=float(rng.uniform(15, 35)),
    )
    return SEED_BASE + i, acq, rng


def write_case(i: int, raw: Path) -> str:
    """Render case i and write its image and SCIseg-style target (1 cord, 2 lesion)."""
    seed, acq, rng = case_acquisition(i)
    anat = random_anatomy(seed)
    anat.lesions = random_lesions(rng, anat)
    ph = render(anat, acq, noise_seed=seed)
    inp = model_input(ph.image, ph.labels)
    spine = labels_onto(np.asarray(ph.labels.dataobj), ph.labels.affine, inp.iso)
    lesion = labels_onto(np.asarray(ph.lesions.dataobj) > 0, ph.lesions.affine, inp.iso)
    target = np.where(lesion > 0, 2, np.where(spine == L.CORD, 1, 0)).astype(np.uint8)
    aff = inp.iso.affine.copy()
    aff[:3, 3] += inp.iso.affine[:3, :3] @ [s.start or 0 for s in inp.box]
    name = f"lesion_{i:03d}"
    nib.save(image_like(inp.crop, aff, inp.iso), raw / "imagesTr" / f"{name}_0000.nii.gz")
    nib.save(image_like(target[inp.box], aff, inp.iso), raw / "labelsTr" / f"{name}.nii.gz")
    levels = ",".join(les.level for les in anat.lesions) or "none"
    return f"case {i}: seed {seed} {acq.fov} {acq.voxel} lesions {levels} {inp.crop.shape}"


def write_dataset(raw: Path, processes: int, n_cases: int) -> None:
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        for line in pool.map(write_case, range(n_cases), repeat(raw)):
            print(line, flush=True)
    dataset = {
        "channel_names": {"0": "T2w"},
        "labels": LABELS,
        "regions_class_order": [1, 2],
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "description": "SpineSeg demo lesion model: synthetic phantoms only (not for real MRI)",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def plan() -> None:
    """nnU-Net fingerprint + planner, then a small 1 mm network; 4 cases held out."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    ds_id = int(DATASET[7:10])
    extract_fingerprints([ds_id], num_processes=1, check_dataset_integrity=True)
    plan_experiments([ds_id])
    path = Path(nnUNet_preprocessed) / DATASET / "nnUNetPlans.json"
    shrink_plans(path, SPACING, PATCH, FEATURES)
    cases = sorted(
        p.name.removesuffix(".nii.gz") for p in (Path(nnUNet_raw) / DATASET / "labelsTr").iterdir()
    )
    write_split(path.parent, cases, cases[:4])
    preprocess([ds_id], configurations=("3d_fullres",), num_processes=(1,))


def train(threads: int, epochs: int) -> None:
    """Fold 0 with nnU-Net's trainer: short schedule, AdamW, half the patches on foreground."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed

    cpu = torch.device("cpu")
    LesionTrainer = cpu_trainer(
        "LesionTrainer", Schedule(epochs=epochs, lr=LR, iterations=ITERS, foreground=0.5)
    )

    # Augmentation in this process (nnU-Net's single-threaded augmenter): one busy core.
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 (nnU-Net's own name)
    torch.manual_seed(MASTER_SEED)
    np.random.seed(MASTER_SEED)
    torch.set_num_threads(threads)
    pre = Path(nnUNet_preprocessed) / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # this nnU-Net's trainer pops it from the plans
    ds_json = json.loads((pre / "dataset.json").read_text())
    LesionTrainer(plans, "3d_fullres", 0, ds_json, cpu).run_training()


def export(results: Path, dest: Path) -> None:
    """SCIseg's layout, optimiser state stripped, installed with its SHA-256 manifest."""
    src = results / DATASET / "LesionTrainer__nnUNetPlans__3d_fullres"
    # The final checkpoint, else (an interrupted run) the best EMA pseudo-Dice one.
    names = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
    ckpt_path = next(src / "fold_0" / n for n in names if (src / "fold_0" / n).exists())
    staging = results / "export" / NAME
    shutil.rmtree(staging.parent, ignore_errors=True)
    epoch = export_checkpoint(ckpt_path, staging / f"{STOCK_TRAINER}__nnUNetPlans__3d_fullres")
    installed = install_lesion_model(staging, dest, force=True)
    print(f"exported {installed.folder} from {ckpt_path.name} (epoch {epoch})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["data", "plan", "train", "export", "all"])
    ap.add_argument("--work", type=Path, required=True, help="nnU-Net raw/preprocessed/results")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--processes", type=int, default=1, help="data: rendering processes")
    ap.add_argument("--cases", type=int, default=N_CASES)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--dest", type=Path, default=DEST)
    args = ap.parse_args()
    work = args.work.resolve()
    use_work_folder(work)
    if args.stage in ("data", "all"):
        write_dataset(work / "raw" / DATASET, args.processes, args.cases)
    if args.stage in ("plan", "all"):
        plan()
    if args.stage in ("train", "all"):
        train(args.threads, args.epochs)
    if args.stage in ("export", "all"):
        export(work / "results", args.dest)


if __name__ == "__main__":
    main()
