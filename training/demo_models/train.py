"""Train the bundled demo models on synthetic phantoms, reproducibly, on CPU.

    python -m training.demo_models.train all --work /tmp/spineseg-train

Stages: `data` renders phantoms and writes the nnU-Net raw datasets Dataset101 (step 1, one
channel) and Dataset102 (step 2, image + alternate-disc channel, both parities) with the
region labels of the official models; `plan` runs nnU-Net's fingerprint/planner and shrinks
the network so it trains on two CPU cores; `train` trains runs of `RECIPE` with nnU-Net's own
trainer (a subclass that only sets the schedule, optimiser, sampling and no mirroring);
`export` strips optimiser state and writes the last run of each step, in the official layout,
into bids_app/demo_models/, where the runtime finds it. `all` is every stage and every run of
the recipe in order: it reproduces the shipped models. Both steps also get deformed phantoms
(wedge, biconcave and crush bodies of Genant grade 1-3, some slips): each split's fold 0 holds
only the normal cases (the shipped runs), fold 1 both (the `-deformed` candidate runs, not
shipped). Training seeds are 1000-1999;
benchmarks use held-out seeds >= 5000. This code is not part of the installed package: run it
from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.engine.geometry import image_like, labels_onto, resample_to_iso, to_canonical
from bids_app.phantom.anatomy import BODY, DISC, SHAPES, Deformity, Slip, random_anatomy
from bids_app.phantom.render import FOVS, Acquisition, fov_s_range, render_phantom
from bids_app.phantom.targets import step1_target, step2_target
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

# The exported models ship inside the runtime package; this training code does not.
DEMO_DIR = Path(__file__).resolve().parents[2] / "bids_app" / "demo_models"
MASTER_SEED = 20261122
N_CASES = 36
# Deformed case k: anatomy seed and acquisition of case DEFORMED_FIRST + k (seeds
# 1500-1523), so they never meet the normal cases' seeds 1000-1035.
N_DEFORMED = 24
DEFORMED_FIRST = 500
# Height lost in each Genant grade's band (Genant 1993: 20-25 %, 25-40 %, > 40 %).
GRADE_BANDS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.60)}
SLIP_SHARE = 0.5  # share of deformed cases that also get a slip of 5-40 %
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"
# The network works at 2 mm: nnU-Net's predictor resamples the 1 mm model input to the plans'
# spacing and the outputs back, so the engine is unchanged, and a patch then sees 160 mm of
# spine, enough context to tell the landmark discs apart.
SPACING = [2.0, 2.0, 2.0]
PATCH = [80, 48, 32]  # nnU-Net axis order (S, A, R), in voxels of SPACING
FEATURES = [8, 16, 32, 64, 96]
ITERS = 50
LR = 2e-3  # initial AdamW learning rate


@dataclass(frozen=True)
class Run:
    """One training run: `init` names the earlier run whose weights it starts from (a fresh
    optimiser and schedule). `sampling` picks the landmark patches (landmark_sampling.py):
    "shifted" off-centre, "centred" on the class (the sampling before the shift, which the
    step-2 base was trained with), "neck" shifted and C2-C3 / C7-T1 drawn more often."""

    name: str
    dataset: str
    epochs: int
    lr: float = LR
    init: str | None = None
    sampling: str = "shifted"
    batch_dice: bool | None = None  # see training/nnunet_cpu.Schedule
    ce_weight: float = 1.0
    fold: int = 0  # 0 trains on the normal phantoms, 1 on the deformed ones too


# How the shipped models were made, in order; `all` trains these and exports the last run of
# each step. The neck runs draw C2-C3 / C7-T1 patches more often, so cervical fields of view
# find their landmarks; the "-bd" runs pool the Dice over the batch and weigh the
# cross-entropy 3x, against landmark heads firing on the other landmark discs.
RECIPE: tuple[Run, ...] = (
    Run("step1", STEP1, 60),
    Run("step1-ft", STEP1, 30, lr=1e-3, init="step1"),
    Run("step1-neck", STEP1, 48, init="step1-ft", sampling="neck"),
    Run("step1-neck-bd", STEP1, 25, 1e-3, "step1-neck", "neck", batch_dice=True, ce_weight=3.0),
    Run("step2", STEP2, 80, sampling="centred"),
    Run("step2-neck", STEP2, 48, init="step2", sampling="neck"),
    Run("step2-neck-bd", STEP2, 25, 1e-3, "step2-neck", "neck", batch_dice=True, ce_weight=3.0),
)
# Runs tried but not shipped (`train --runs`, `export --runs` with a --dest of their own).
# step2-deformed: the final labels followed the whole, normal shape of fractured bodies; this
# fine-tune on the deformed phantoms too raised the body Dice but cost landmarks (demo README).
# step1-deformed + step2-deformed40: both steps, twice the epochs, since step 1's disc masks
# (step 2's second channel) still drew the discs of a fractured body at their normal size.
_DEFORMED = {"sampling": "neck", "batch_dice": True, "ce_weight": 3.0, "fold": 1}
CANDIDATES: tuple[Run, ...] = (
    Run("step2-deformed", STEP2, 20, 1e-3, "step2-neck-bd", **_DEFORMED),
    Run("step1-deformed", STEP1, 40, 1e-3, "step1-neck-bd", **_DEFORMED),
    Run("step2-deformed40", STEP2, 40, 1e-3, "step2-neck-bd", **_DEFORMED),
)
RUNS = {run.name: run for run in (*RECIPE, *CANDIDATES)}


def case_acquisition(i: int) -> tuple[int, Acquisition]:
    """Anatomy seed and acquisition of training case i (deterministic from MASTER_SEED)."""
    rng = np.random.default_rng(MASTER_SEED + i)
    fov = str(rng.choice(FOVS, p=[0.3, 0.2, 0.15, 0.15, 0.2]))
    voxel = str(rng.choice(["iso1", "sag3", "ax4"], p=[0.65, 0.2, 0.15]))
    oblique = tuple(float(v) for v in rng.uniform(-12, 12, 3)) if rng.random() < 0.2 else (0, 0, 0)
    contrast = str(rng.choice(["T2w", "T1w"]))
    acq = Acquisition(
        fov=fov,
        voxel=voxel,
        axcodes="RAS",
        oblique_deg=oblique,
        contrast=contrast,
        snr=float(rng.uniform(12, 35)),
    )
    return 1000 + i, acq


def deformed_case(k: int) -> tuple[int, Acquisition, tuple[Deformity, ...], tuple[Slip, ...]]:
    """Anatomy seed, acquisition, deformities and slips of deformed training case k.

    One to three non-adjacent bodies (C3 and below) that the field of view shows whole, each
    of a random shape and Genant grade with a height loss anywhere in the grade's band, and
    on SLIP_SHARE of the cases an anterior slip of 5-40 % at a disc between two shown bodies.
    """
    seed, acq = case_acquisition(DEFORMED_FIRST + k)
    rng = np.random.default_rng([MASTER_SEED, seed])
    anat = random_anatomy(seed)
    lo, hi = fov_s_range(anat, acq.fov)
    segs = anat.segments
    shown = [
        i
        for i, seg in enumerate(segs)
        if seg.kind == BODY and seg.label != 12 and seg.s_top >= lo and seg.s_bot <= hi
    ]
    count, chosen = int(rng.integers(1, 4)), list[int]()
    for i in rng.permutation(shown):
        if all(abs(int(i) - j) > 2 for j in chosen):  # bodies and discs alternate
            chosen.append(int(i))
        if len(chosen) == count:
            break
    deformities = []
    for i in sorted(chosen):
        grade = int(rng.integers(1, 4))
        loss = float(rng.uniform(*GRADE_BANDS[grade]))
        shape = str(rng.choice(SHAPES))
        deformities.append(Deformity(L.VERTEBRAE[segs[i].label], shape, grade, loss))
    discs = [
        i
        for i, seg in enumerate(segs)
        if seg.kind == DISC and seg.label != 63 and i - 1 in shown and i + 1 in shown
    ]
    slips: tuple[Slip, ...] = ()
    if discs and rng.random() < SLIP_SHARE:
        disc = L.DISCS[segs[int(rng.choice(discs))].label]
        slips = (Slip(disc, float(rng.uniform(5, 40))),)
    return seed, acq, tuple(deformities), slips


def _save(data: np.ndarray, affine: np.ndarray, template: nib.Nifti1Image, path: Path) -> None:
    nib.save(image_like(data, affine, template), path)


def region_labels(regions: dict[str, tuple[int, ...]]) -> dict[str, object]:
    out: dict[str, object] = {"background": 0}
    out.update({name: list(ids) if len(ids) > 1 else ids[0] for name, ids in regions.items()})
    return out


def _write_case(i: int, d1: Path, d2: Path, deformed: bool = False) -> str:
    """Render training case i (a deformed case: `deformed_case(i)`) and write its step-1 and
    step-2 (both parities) files."""
    if deformed:
        seed, acq, deformities, slips = deformed_case(i)
        ph = render_phantom(seed, acq, deformities=deformities, slips=slips)
        name = f"deformed_{i:03d}"
    else:
        seed, acq = case_acquisition(i)
        ph = render_phantom(seed, acq)
        name = f"phantom_{i:03d}"
    # What the engine feeds the model: canonical orientation, 1 mm torchio grid.
    img = resample_to_iso(to_canonical(ph.image))
    gt = labels_onto(np.asarray(ph.labels.dataobj), ph.labels.affine, img)
    data = np.asanyarray(img.dataobj)
    _save(data, img.affine, img, d1 / "imagesTr" / f"{name}_0000.nii.gz")
    _save(step1_target(gt), img.affine, img, d1 / "labelsTr" / f"{name}.nii.gz")
    # Step 2 sees the image cropped to the step-1 labels +- 10 voxels.
    nz = np.argwhere(gt > 0)
    lo = np.maximum(nz.min(0) - 10, 0)
    hi = np.minimum(nz.max(0) + 11, gt.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    aff = img.affine.copy()
    aff[:3, 3] += img.affine[:3, :3] @ lo
    for parity in (0, 1):
        target, channel = step2_target(gt[sl], start=parity)
        case = f"{name}_p{parity}"
        _save(data[sl], aff, img, d2 / "imagesTr" / f"{case}_0000.nii.gz")
        _save(channel, aff, img, d2 / "imagesTr" / f"{case}_0001.nii.gz")
        _save(target, aff, img, d2 / "labelsTr" / f"{case}.nii.gz")
    drawn = [f"{d.level}:{d.shape}:{d.grade}" for d in ph.anatomy.deformities]
    drawn += [f"{x.disc}:{x.percent:.0f}%" for x in ph.anatomy.slips]
    head = f"{name}: seed {seed} {acq.fov} {acq.voxel} {acq.contrast} {img.shape}"
    return " ".join([head, *drawn])


def write_datasets(
    raw: Path, processes: int, n_cases: int = N_CASES, n_deformed: int = N_DEFORMED
) -> None:
    """Render the training phantoms and write both nnU-Net raw datasets (step 2 with the
    deformed cases too).

    Each case depends only on its index, so the cases are split over worker processes.
    """
    d1, d2 = raw / STEP1, raw / STEP2
    for d in (d1, d2):
        (d / "imagesTr").mkdir(parents=True, exist_ok=True)
        (d / "labelsTr").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        cases = [(i, False) for i in range(n_cases)] + [(k, True) for k in range(n_deformed)]
        lines = pool.map(
            _write_case, [i for i, _ in cases], repeat(d1), repeat(d2), [d for _, d in cases]
        )
        for line in lines:
            print(line, flush=True)
    for d, channels, regions, n in (
        (d1, {"0": "MRI"}, L.STEP1_REGIONS, n_cases + n_deformed),
        (d2, {"0": "MRI", "1": "noNorm"}, L.STEP2_REGIONS, 2 * (n_cases + n_deformed)),
    ):
        ds = {
            "channel_names": channels,
            "labels": region_labels(regions),
            "regions_class_order": list(range(1, len(regions) + 1)),
            "numTraining": n,
            "file_ending": ".nii.gz",
            "description": "SpineSeg demo: synthetic spine phantoms (not for real MRI)",
        }
        (d / "dataset.json").write_text(json.dumps(ds, indent=2))


def plan(ids: list[int]) -> None:
    """nnU-Net fingerprint + planner, then a network small enough for CPU training, for the
    datasets `ids` (101: step 1, 102: step 2)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    extract_fingerprints(ids, num_processes=2, check_dataset_integrity=True)
    plan_experiments(ids)
    for name in (n for n in (STEP1, STEP2) if int(n[7:10]) in ids):
        path = Path(nnUNet_preprocessed) / name / "nnUNetPlans.json"
        cfg = shrink_plans(path, SPACING, PATCH, FEATURES)
        # A few held-back cases validate; the other normal cases train fold 0, and fold 1
        # trains the deformed cases too.
        cases = sorted(
            p.name[: -len(".nii.gz")]
            for p in (Path(nnUNet_raw) / name / "labelsTr").glob("*.nii.gz")
        )
        val = [c for c in cases if c.startswith(("phantom_000", "phantom_001"))]
        deformed = [c for c in cases if c.startswith("deformed_")]
        normal = [c for c in cases if c not in deformed]
        write_split(path.parent, normal, val, [deformed] if deformed else [])
        arch = cfg["architecture"]["arch_kwargs"]
        print(f"planned {name}: {cfg['patch_size']} {arch['features_per_stage']}", flush=True)
    preprocess(ids, configurations=("3d_fullres",), num_processes=(2,))


def checkpoint(results: Path, run: Run) -> Path:
    """The final checkpoint of a run (the latest one while it is still training)."""
    trainer = results / run.name / run.dataset / "DemoTrainer__nnUNetPlans__3d_fullres"
    fold = trainer / f"fold_{run.fold}"
    final = fold / "checkpoint_final.pth"
    return final if final.exists() else fold / "checkpoint_latest.pth"


def train(run: Run, results: Path, threads: int, init: Path | None = None) -> None:
    """Train fold 0 of one recipe run with nnU-Net's trainer on the CPU, into results/<run>.

    The run starts from `init` when given, else from its recipe's `init` run, else from a
    random initialisation. A run that was interrupted (a latest but no final checkpoint) goes
    on from its latest checkpoint instead, with nnU-Net's own resume.
    """
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    from training.demo_models import landmark_sampling as ls

    cpu = torch.device("cpu")
    # No mirroring: it would teach the net that up and down look alike, and the landmark discs
    # (C2-C3 at the top, L5-S at the bottom) are told apart by exactly that. Most patches are
    # forced onto foreground, most of those onto a landmark class (the loaders below).
    DemoTrainer = cpu_trainer(
        "DemoTrainer",
        Schedule(
            epochs=run.epochs,
            lr=run.lr,
            iterations=ITERS,
            foreground=0.6,
            rotation_deg=15,
            batch_dice=run.batch_dice,
            ce_weight=run.ce_weight,
        ),
    )
    start = init or (checkpoint(results, RUNS[run.init]) if run.init else None)
    torch.manual_seed(MASTER_SEED)
    np.random.seed(MASTER_SEED)
    torch.set_num_threads(threads)
    # What get_dataloaders instantiates: nnU-Net's loader, biased towards the landmarks.
    trainer_module.nnUNetDataLoader = {
        (STEP1, "shifted"): ls.Step1LandmarkLoader,
        (STEP1, "neck"): ls.Step1NeckLoader,
        (STEP2, "centred"): ls.Step2CentredLoader,
        (STEP2, "shifted"): ls.Step2LandmarkLoader,
        (STEP2, "neck"): ls.Step2NeckLoader,
    }[(run.dataset, run.sampling)]
    # Each run writes its own folder, so a fine-tuning never overwrites the run it starts from.
    os.environ["nnUNet_results"] = str(results / run.name)  # noqa: SIM112 (nnU-Net's name)
    pre = Path(nnUNet_preprocessed) / run.dataset
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    interrupted = checkpoint(results, run)
    resume = interrupted.name == "checkpoint_latest.pth" and interrupted.exists()
    plans["continue_training"] = resume
    ds_json = json.loads((pre / "dataset.json").read_text())
    trainer = DemoTrainer(plans, "3d_fullres", run.fold, ds_json, cpu)
    if resume:
        trainer.load_checkpoint(str(interrupted))
        print(f"{run.name}: resumes at epoch {trainer.current_epoch}", flush=True)
    elif start is not None:
        trainer.initialize()
        ckpt = torch.load(start, map_location="cpu", weights_only=False)
        trainer.network.load_state_dict(ckpt["network_weights"])
        print(f"{run.name}: starts from {start} (epoch {ckpt.get('current_epoch')})", flush=True)
    trainer.run_training()


def _history(dataset: str, runs: Sequence[Run] = RECIPE) -> str:
    """The runs that made one step's exported model, in order, as the README states them."""
    chain = [[r for r in runs if r.dataset == dataset][-1]]
    while chain[0].init:
        chain.insert(0, RUNS[chain[0].init])
    parts = [
        f"`{r.name}` {r.epochs} epochs at learning rate {r.lr:g}"
        + (f" from `{r.init}`" if r.init else " from scratch")
        + f", {r.sampling} landmark patches"
        + (", Dice pooled over the batch" if r.batch_dice else "")
        + (f", cross-entropy weight {r.ce_weight:g}" if r.ce_weight != 1 else "")
        + (f", with the {N_DEFORMED} deformed phantoms" if r.fold == 1 else "")
        for r in chain
    ]
    return f"- {dataset}: " + "; then ".join(parts) + f" ({ITERS} iterations per epoch)."


def export(results: Path, dest: Path, runs: Sequence[Run] = RECIPE) -> None:
    """The last of `runs` for each step in the official layout, optimiser state stripped,
    trainer name a stock nnU-Net one; their hashes and history go into dest/README.md."""
    for dataset in (STEP1, STEP2):
        run = [r for r in runs if r.dataset == dataset][-1]
        ckpt_path = checkpoint(results, run)
        out = dest / dataset / f"{STOCK_TRAINER}__nnUNetPlans__3d_fullres"
        epoch = export_checkpoint(ckpt_path, out)
        print(f"exported {dataset} from {ckpt_path} (epoch {epoch})")
    files = sorted(p for p in dest.glob("Dataset10*/*/**/*") if p.is_file())
    sums = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(dest).as_posix()}"
        for p in files
    ]
    _replace_block(dest / "README.md", "demo-sha", "```\n" + "\n".join(sums) + "\n```")
    history = "\n".join(_history(d, runs) for d in (STEP1, STEP2))
    _replace_block(dest / "README.md", "demo-training", history)


def _replace_block(path: Path, marker: str, text: str) -> None:
    """Rewrite the lines between `<!-- marker:start -->` and `<!-- marker:end -->`."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = path.read_text().split(start, 1)
    path.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["data", "plan", "train", "export", "all"])
    ap.add_argument(
        "--work", type=Path, required=True, help="nnU-Net raw/preprocessed/results root"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--dest", type=Path, default=DEMO_DIR, help="where the exported models go")
    ap.add_argument("--cases", type=int, default=N_CASES, help="data: training phantoms")
    ap.add_argument("--deformed", type=int, default=N_DEFORMED, help="data: deformed phantoms")
    ap.add_argument(
        "--runs",
        nargs="+",
        choices=list(RUNS),
        default=[r.name for r in RECIPE],
        help="train: these runs, in the order given; export: the last of them for each step "
        "(default: RECIPE, the shipped models)",
    )
    ap.add_argument(
        "--init",
        type=Path,
        help="train: the first run starts from this checkpoint instead of its recipe's run",
    )
    args = ap.parse_args(argv)
    work = args.work.resolve()
    use_work_folder(work)
    if args.stage in ("data", "all"):
        write_datasets(work / "raw", len(os.sched_getaffinity(0)), args.cases, args.deformed)
    if args.stage in ("plan", "all"):
        plan([101, 102])
    if args.stage in ("train", "all"):
        runs = [RUNS[name] for name in args.runs] if args.stage == "train" else list(RECIPE)
        for k, run in enumerate(runs):
            train(run, work / "results", args.threads, args.init if k == 0 else None)
    if args.stage in ("export", "all"):
        chosen = [RUNS[name] for name in args.runs] if args.stage == "export" else list(RECIPE)
        export(work / "results", args.dest, chosen)


if __name__ == "__main__":
    main()
