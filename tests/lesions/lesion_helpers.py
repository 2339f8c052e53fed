"""Tiny lesion models in nnU-Net's result layout (SCIseg's), random weights, built on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from bids_app.nnunet.weights import DEMO_DIR, STEP1

TRAINER = "nnUNetTrainerDA5__nnUNetPlans__3d_fullres"
SCISEG_LABELS = {
    "labels": {"background": 0, "sc": [1, 2], "lesion": 2},
    "regions_class_order": [1, 2],
}
MS_LABELS = {"labels": {"background": 0, "lesion": 1}}


def tiny_plans() -> dict:
    """The demo step-1 plans with a 3-stage, 1 mm network (predicts in well under a second)."""
    plans = json.loads(next((DEMO_DIR / STEP1).glob("*/plans.json")).read_text())
    cfg = plans["configurations"]["3d_fullres"]
    cfg.update(spacing=[1.0, 1.0, 1.0], patch_size=[32, 32, 32])
    cfg["architecture"]["arch_kwargs"].update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[2, 2, 2],
        n_conv_per_stage_decoder=[2, 2],
    )
    return plans


def build_lesion_model(
    parent: Path,
    name: str = "model_tiny_lesion",
    labels: dict | None = None,
    folds: tuple[int, ...] = (0,),
    outputs: int | None = None,
) -> Path:
    """`<parent>/<name>/<trainer>/fold_<k>/checkpoint_final.pth` (seed k); `outputs` overrides
    the number of network outputs (a model that does not match its dataset.json)."""
    labels = labels or SCISEG_LABELS
    plans = tiny_plans()
    trainer_dir = parent / name / TRAINER
    trainer_dir.mkdir(parents=True)
    dataset = {"channel_names": {"0": "T2w"}, **labels, "file_ending": ".nii.gz"}
    (trainer_dir / "plans.json").write_text(json.dumps(plans))
    (trainer_dir / "dataset.json").write_text(json.dumps(dataset))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    n_names = len(labels["labels"]) - 1
    n_out = outputs or (n_names if "regions_class_order" in labels else n_names + 1)
    for k in folds:
        torch.manual_seed(k)
        net = get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            1,
            n_out,
            allow_init=True,
            deep_supervision=False,
        )
        (trainer_dir / f"fold_{k}").mkdir()
        torch.save(
            {"network_weights": net.state_dict(), "init_args": {"configuration": "3d_fullres"}},
            trainer_dir / f"fold_{k}" / "checkpoint_final.pth",
        )
    return parent / name
