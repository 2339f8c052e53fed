"""What the demo models (spine, lesion) change in nnU-Net to train on two CPU cores, written
once: the plans (a small PlainConvUNet at a chosen spacing and patch), a fixed validation split,
the trainer (a short schedule, AdamW with polynomial decay, a chosen share of foreground
patches, optionally narrower rotations without mirroring, optionally another loss weighting),
and the exported checkpoint (optimiser state stripped, a stock trainer name).

nnU-Net names the results folder after the trainer class (`<Trainer>__<Plans>__<Config>`),
so each model gets its own class name. torch and nnU-Net are imported on call: importing the
training scripts (their tests do) stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# What exported checkpoints name as their trainer, so stock nnU-Net and the reference load them.
STOCK_TRAINER = "nnUNetTrainer"
CONFIG = "3d_fullres"


def use_work_folder(work: Path) -> None:
    """Point nnU-Net's raw, preprocessed and results folders into `work` (created). Call it
    before nnunetv2 is imported: it reads them at import time."""
    for var, sub in (
        ("nnUNet_raw", "raw"),
        ("nnUNet_preprocessed", "preprocessed"),
        ("nnUNet_results", "results"),
    ):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(work / sub)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # the planner needs >= 1


def shrink_plans(
    path: Path, spacing: Sequence[float], patch: Sequence[int], features: Sequence[int]
) -> dict:
    """Rewrite nnU-Net's plans at `path`: only 3d_fullres, at `spacing` with `patch` (nnU-Net's
    axis order) and batch 2, a PlainConvUNet with one stage per entry of `features`. Returns
    the configuration written."""
    plans = json.loads(path.read_text())
    plans["configurations"] = {CONFIG: plans["configurations"][CONFIG]}
    cfg = plans["configurations"][CONFIG]
    cfg.update(spacing=list(spacing), patch_size=list(patch), batch_size=2)
    n = len(features)
    cfg["architecture"]["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=list(features),
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    path.write_text(json.dumps(plans, indent=2))
    return cfg


def write_split(
    preprocessed: Path,
    cases: Sequence[str],
    val: Sequence[str],
    more: Sequence[Sequence[str]] = (),
) -> None:
    """Fold 0: `val` held back, every other case of `cases` trains; fold k >= 1 trains the
    cases of `more[k - 1]` too (same `val`), for a fine-tuning on extra cases."""
    base = [c for c in cases if c not in val]
    split = [{"train": base + list(extra), "val": list(val)} for extra in ([], *more)]
    (preprocessed / "splits_final.json").write_text(json.dumps(split, indent=2))


def export_checkpoint(ckpt_path: Path, trainer_dir: Path) -> int | None:
    """Write the checkpoint at `ckpt_path` as `trainer_dir/fold_0/checkpoint_final.pth`, with
    the plans and dataset.json of its run beside it: network weights only, no mirroring, a
    stock trainer name. Returns the epoch it was saved at."""
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    slim = {
        "network_weights": ckpt["network_weights"],
        "init_args": {"configuration": CONFIG},
        "trainer_name": STOCK_TRAINER,
        "inference_allowed_mirroring_axes": None,
        "current_epoch": ckpt.get("current_epoch"),
    }
    run_dir = ckpt_path.parents[1]
    (trainer_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "plans.json", trainer_dir / "plans.json")
    shutil.copy(run_dir / "dataset.json", trainer_dir / "dataset.json")
    torch.save(slim, trainer_dir / "fold_0" / "checkpoint_final.pth")
    return slim["current_epoch"]


@dataclass(frozen=True)
class Schedule:
    """What a CPU training run changes from nnU-Net's defaults."""

    epochs: int
    lr: float  # initial AdamW learning rate
    iterations: int  # training iterations per epoch (nnU-Net: 250)
    foreground: float  # share of patches forced onto foreground (nnU-Net: 0.33)
    # Rotation range in degrees (nnU-Net: 180) and mirroring off, for a model whose classes
    # differ only by their place along the spine; None keeps nnU-Net's augmentation.
    rotation_deg: float | None = None
    # The loss: nnU-Net's Dice is per patch unless `batch_dice`, so a head that fires on a patch
    # without its class gets no Dice gradient; only the cross-entropy (weight `ce_weight`,
    # nnU-Net: 1) sees it. Pooling the Dice over the batch makes such false positives count
    # whenever the other patch holds the class.
    batch_dice: bool | None = None  # None: the plans' choice
    ce_weight: float = 1.0


def cpu_trainer(name: str, schedule: Schedule) -> type:
    """A subclass of nnU-Net's trainer, called `name`, that trains with `schedule` on the CPU."""
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cpu = torch.device("cpu")

    class Trainer(nnUNetTrainer):
        def __init__(  # type: ignore[no-untyped-def]
            self, plans, configuration, fold, dataset_json, device=cpu
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = schedule.epochs
            self.num_iterations_per_epoch = schedule.iterations
            self.num_val_iterations_per_epoch = 4
            self.initial_lr = schedule.lr
            self.save_every = 2
            self.oversample_foreground_percent = schedule.foreground
            if schedule.batch_dice is not None:  # read when the loss is built (initialize)
                self.configuration_manager.configuration["batch_dice"] = schedule.batch_dice

        def _build_loss(self):  # type: ignore[no-untyped-def]
            loss = super()._build_loss()
            getattr(loss, "loss", loss).weight_ce = schedule.ce_weight  # inside deep supervision
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            opt = torch.optim.AdamW(
                self.network.parameters(), lr=self.initial_lr, weight_decay=1e-4
            )
            return opt, PolyLRScheduler(opt, self.initial_lr, self.num_epochs)

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # type: ignore[no-untyped-def]
            rot, dummy_2d, initial, mirror = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            if schedule.rotation_deg is None:
                return rot, dummy_2d, initial, mirror
            limit = schedule.rotation_deg / 180 * np.pi
            self.inference_allowed_mirroring_axes = None
            return (-limit, limit), dummy_2d, initial, None

    Trainer.__name__ = Trainer.__qualname__ = name
    return Trainer
