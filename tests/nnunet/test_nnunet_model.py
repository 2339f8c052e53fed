"""NnUNetModel: loads official-layout folders without trainer lookup, predicts like nnU-Net."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from bids_app.nnunet.model import NnUNetModel, default_threads, resolve_device
from bids_app.nnunet.weights import WeightsError

CPU = torch.device("cpu")
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def step1(tiny_models):
    return NnUNetModel.load(tiny_models["step1"], CPU, threads=1)


@pytest.fixture(scope="module")
def step2(tiny_models):
    return NnUNetModel.load(tiny_models["step2"], CPU, threads=1)


def regions_to_labels(probabilities: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """TotalSpineSeg's region rule (docs/method.md §4.3): later regions overwrite earlier ones."""
    labels = np.zeros(probabilities.shape[1:], np.uint8)
    for head, label in enumerate(order):
        labels[probabilities[head] > 0.5] = label
    return labels


def test_load_reads_model_facts_without_trainer_class(step1, step2, tiny_models):
    # nnUNetTrainerDAExtGPU is not installed: loading must not need it.
    assert step1.trainer_name == step2.trainer_name == "nnUNetTrainerDAExtGPU"
    assert step1.checkpoint_path == (
        tiny_models["step1"]
        / "nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres/fold_0"
        / "checkpoint_final.pth"
    )
    assert step1.configuration == "3d_fullres"
    assert (step1.num_input_channels, step2.num_input_channels) == (1, 2)
    assert step1.is_region_based and step2.is_region_based
    assert step1.regions_class_order == (1, 2, 3, 4, 5, 6, 7)
    assert step2.regions_class_order == (1, 2, 3, 4)
    assert (step1.num_outputs, step2.num_outputs) == (7, 4)
    assert step1.device == CPU


@pytest.mark.parametrize("which", ["step1", "step2"])
def test_predict_returns_nibabel_order_on_input_grid(which, step1, step2, image_maker):
    model = {"step1": step1, "step2": step2}[which]
    image = image_maker(model.num_input_channels, shape=(40, 36, 30))
    seg, probs = model.predict(image, return_probabilities=True)
    assert seg.shape == (40, 36, 30) and seg.dtype == np.uint8
    assert probs.shape == (model.num_outputs, 40, 36, 30) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    # Labels and probabilities come back on the same grid: the region rule reproduces them.
    np.testing.assert_array_equal(seg, regions_to_labels(probs, model.regions_class_order))
    assert len(np.unique(seg)) >= 3, "random weights should still give several labels"
    # Outside nnU-Net's nonzero crop box (the zero border of channel 0) everything is 0.
    if model.num_input_channels == 1:
        assert not seg[:3].any() and not probs[:, :, :, -2:].any()
    seg_only, none = model.predict(image)
    assert none is None
    np.testing.assert_array_equal(seg_only, seg)


def test_predict_rejects_wrong_channel_count(step2, image_maker):
    with pytest.raises(ValueError, match=r"expected \(2, x, y, z\) channels"):
        step2.predict(image_maker(1))
    with pytest.raises(ValueError, match="spacing"):
        step2.predict(image_maker(2), spacing=(1.0, 0.0, 1.0))


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))],
)
@pytest.mark.parametrize(
    ("which", "spacing"), [("step1", (1.0, 1.0, 1.0)), ("step2", (0.8, 1.0, 1.3))]
)
def test_same_as_nnunet_predicting_from_nifti_files(
    which, spacing, device, tiny_models, tmp_path, image_maker
):
    """Array path == nnU-Net's own file path (its trainer lookup, SimpleITK reader, writer).

    The anisotropic case makes nnU-Net resample, so a spacing given in the wrong axis order
    would change the result; the non-cubic shape catches transposed axes.
    """
    # Stock nnU-Net can only look up the plain trainer; same weights otherwise.
    stock = tmp_path / "stock" / tiny_models[which].name
    shutil.copytree(tiny_models[which], stock)
    trainer_dir = next(stock.glob("*__*__*"))
    renamed = trainer_dir.with_name("nnUNetTrainer__nnUNetPlans__3d_fullres")
    trainer_dir.rename(renamed)
    ckpt_path = renamed / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["trainer_name"] = "nnUNetTrainer"
    torch.save(ckpt, ckpt_path)

    ours = NnUNetModel.load(tiny_models[which], torch.device(device), threads=1)
    image = image_maker(ours.num_input_channels, shape=(37, 33, 29), seed=7)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-12.0, 30.0, 5.0)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    for c, channel in enumerate(image):
        nib.save(nib.Nifti1Image(channel, affine), in_dir / f"case_{c:04d}.nii.gz")

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=device == "cuda",  # as TotalSpineSeg asks
        device=torch.device(device),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(renamed), (0,), "checkpoint_final.pth")
    predictor.predict_from_files_sequential(str(in_dir), str(out_dir), save_probabilities=True)

    seg, probs = ours.predict(image, spacing=spacing, return_probabilities=True)
    written = nib.load(out_dir / "case.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(seg, np.asarray(written.dataobj))
    # nnU-Net's .npz keeps SimpleITK order (c, z, y, x); TotalSpineSeg transposes it back.
    npz = np.load(out_dir / "case.npz")["probabilities"]
    np.testing.assert_array_equal(probs, npz.transpose(0, 3, 2, 1))
    assert len(np.unique(seg)) >= 3


def test_checkpoint_best_is_preferred(dataset_builder, tmp_path, image_maker):
    """Seeds stand for weights: best = seed 5, final = seed 6."""
    name = "Dataset101_X"
    both = dataset_builder(
        tmp_path / "a", name, 1, checkpoints={"checkpoint_best.pth": 5, "checkpoint_final.pth": 6}
    )
    best_only = dataset_builder(tmp_path / "b", name, 1, checkpoints={"checkpoint_final.pth": 5})
    final_only = dataset_builder(tmp_path / "c", name, 1, checkpoints={"checkpoint_final.pth": 6})
    model = NnUNetModel.load(both, CPU, threads=1)
    assert model.checkpoint_path.name == "checkpoint_best.pth"
    image = image_maker(1)

    def probabilities(folder):
        return NnUNetModel.load(folder, CPU, threads=1).predict(image, return_probabilities=True)[1]

    probs = model.predict(image, return_probabilities=True)[1]
    np.testing.assert_array_equal(probs, probabilities(best_only))
    assert not np.array_equal(probs, probabilities(final_only))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_gives_one_line_weights_error(damage, tiny_models, tmp_path):
    ds = tmp_path / tiny_models["step1"].name
    shutil.copytree(tiny_models["step1"], ds)
    ckpt = next(ds.glob("*/fold_0/checkpoint_final.pth"))
    data = ckpt.read_bytes()
    new = {
        "truncate": data[: len(data) // 2],
        "garbage": b"\x00not a checkpoint" * 50,
        "empty": b"",
    }[damage]
    ckpt.write_bytes(new)
    with pytest.raises(WeightsError) as info:
        NnUNetModel.load(ds, CPU)
    message = str(info.value)
    assert message.startswith(f"{ckpt}: corrupt or truncated checkpoint (")
    assert "\n" not in message


def test_weights_that_do_not_fit_plans(tiny_models, tmp_path):
    ds = tmp_path / tiny_models["step1"].name
    shutil.copytree(tiny_models["step1"], ds)
    step2_ckpt = next(tiny_models["step2"].glob("*/fold_0/checkpoint_final.pth"))
    target = next(ds.glob("*/fold_0/checkpoint_final.pth"))
    shutil.copyfile(step2_ckpt, target)
    with pytest.raises(WeightsError, match=r"weights do not fit the network in plans\.json"):
        NnUNetModel.load(ds, CPU)


def test_missing_pieces_are_named(tiny_models, tmp_path):
    ds = tmp_path / tiny_models["step1"].name
    shutil.copytree(tiny_models["step1"], ds)
    plans = next(ds.glob("*/plans.json"))
    plans.write_text("{ not json")
    with pytest.raises(WeightsError, match=f"^{plans}: unreadable JSON"):
        NnUNetModel.load(ds, CPU)
    plans.unlink()
    with pytest.raises(WeightsError, match=f"^{plans}: missing$"):
        NnUNetModel.load(ds, CPU)
    with pytest.raises(WeightsError, match="model folder not found"):
        NnUNetModel.load(tmp_path / "nowhere", CPU)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_threads_follow_affinity_on_cpu(tiny_models):
    assert default_threads() == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        NnUNetModel.load(tiny_models["step1"], CPU)
        assert torch.get_num_threads() == default_threads()
        NnUNetModel.load(tiny_models["step1"], CPU, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
