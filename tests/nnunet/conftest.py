"""Tiny nnU-Net models built on the fly, laid out like the official TotalSpineSeg folders.

Region-based like TotalSpineSeg's datasets (sigmoid heads, overlapping regions,
`regions_class_order`), random weights, patch 32^3 at 1 mm: small enough to predict in well
under a second on one core, while exercising nnU-Net's real preprocessing and sliding window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

CONFIG = "3d_fullres"
FEATURES = [4, 8, 16]

# Region layout of TotalSpineSeg's step-1 dataset.json (docs/method.md §4.1), generic names.
REGION_LABELS_1CH = {
    "background": 0,
    "a_any": [1, 2, 3],
    "a_landmark_1": 2,
    "a_landmark_2": 3,
    "b_any": [4, 5],
    "b_landmark": 5,
    "c_outer": [6, 7],
    "c_inner": 7,
}
# Step 2 adds a binary second input channel that is not normalised ("noNorm").
REGION_LABELS_2CH = {"background": 0, "a": [1, 2], "b": 2, "c": [3, 4], "d": 4}


def _plans(n_channels: int) -> dict:
    norm = ["ZScoreNormalization", "NoNormalization"][:n_channels]
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": FEATURES,
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    intensity = {
        "max": 1.0,
        "mean": 0.5,
        "median": 0.5,
        "min": 0.0,
        "percentile_00_5": 0.0,
        "percentile_99_5": 1.0,
        "std": 0.2,
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [48, 48, 48],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIG: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [48, 48, 48],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": norm,
                "use_mask_for_norm": [False] * n_channels,
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": arch,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): intensity for i in range(n_channels)
        },
    }


def _dataset_json(n_channels: int) -> dict:
    labels = REGION_LABELS_1CH if n_channels == 1 else REGION_LABELS_2CH
    n_regions = len(labels) - 1
    return {
        "channel_names": {"0": "MRI", "1": "noNorm"} if n_channels == 2 else {"0": "MRI"},
        "labels": labels,
        "regions_class_order": list(range(1, n_regions + 1)),
        "numTraining": 10,
        "file_ending": ".nii.gz",
    }


def build_dataset(
    parent: Path,
    name: str,
    n_channels: int,
    *,
    trainer: str = "nnUNetTrainerDAExtGPU",
    checkpoints: dict[str, int] | None = None,
) -> Path:
    """Write `<parent>/<name>/<trainer>__nnUNetPlans__3d_fullres/` with fold_0 checkpoints.

    `checkpoints` maps checkpoint file name -> random seed of its weights (same seed, same
    weights), default one `checkpoint_final.pth` with seed 0.
    """
    plans, dataset = _plans(n_channels), _dataset_json(n_channels)
    trainer_dir = parent / name / f"{trainer}__nnUNetPlans__{CONFIG}"
    (trainer_dir / "fold_0").mkdir(parents=True)
    (trainer_dir / "plans.json").write_text(json.dumps(plans, indent=1))
    (trainer_dir / "dataset.json").write_text(json.dumps(dataset, indent=1))
    arch = plans["configurations"][CONFIG]["architecture"]
    n_out = len(dataset["regions_class_order"])
    for file_name, seed in (checkpoints or {"checkpoint_final.pth": 0}).items():
        torch.manual_seed(seed)
        net = get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            n_channels,
            n_out,
            allow_init=True,
            deep_supervision=False,
        )
        checkpoint = {
            "network_weights": net.state_dict(),
            "init_args": {"configuration": CONFIG},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": None,
        }
        torch.save(checkpoint, trainer_dir / "fold_0" / file_name)
    return parent / name


def make_image(n_channels: int, shape=(40, 36, 30), seed: int = 1) -> np.ndarray:
    """(c, x, y, z) float32: smooth blobs on a zero border (so nnU-Net's nonzero crop acts)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    image = np.zeros((n_channels, *shape), np.float32)
    body = np.sin(3 * x + 1) * np.cos(2 * y) + z**2 + 0.1 * rng.standard_normal(shape)
    image[0, 3:-4, 2:-3, 4:-2] = (100 + 50 * body)[3:-4, 2:-3, 4:-2]
    if n_channels == 2:
        image[1] = ((x > 0.2) & (np.abs(y) < 0.5)).astype(np.float32)
    return image


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Official-layout step-1-like (1 channel) and step-2-like (2 channels) Dataset folders."""
    root = tmp_path_factory.mktemp("models")
    return {
        "step1": build_dataset(root, "Dataset101_TotalSpineSeg_step1", 1),
        "step2": build_dataset(root, "Dataset102_TotalSpineSeg_step2", 2),
    }


@pytest.fixture
def dataset_builder():
    return build_dataset


@pytest.fixture
def image_maker():
    return make_image
