"""Lesion models: labels from dataset.json, folds ensembled, install and verify (exit 78)."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from lesion_helpers import MS_LABELS, TRAINER, build_lesion_model

from bids_app.lesions.labels import read_labels
from bids_app.lesions.model import LesionModel
from bids_app.lesions.weights import install_lesion_model, resolve_lesion_model
from bids_app.nnunet.model import NnUNetModel
from bids_app.nnunet.weights import DEMO_DIR, STEP1, WeightsError


def _image(shape=(30, 28, 40)) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros(shape, np.float32)
    img[3:-3, 3:-3, 3:-3] = 100 + 20 * rng.standard_normal((shape[0] - 6, shape[1] - 6, 34))
    return img


def test_labels_come_from_dataset_json(tmp_path):
    sciseg = read_labels(build_lesion_model(tmp_path, "a") / TRAINER / "dataset.json")
    assert (sciseg.lesion, sciseg.cord, sciseg.heads) == (2, (1, 2), 2)
    ms = read_labels(build_lesion_model(tmp_path, "b", MS_LABELS) / TRAINER / "dataset.json")
    assert (ms.lesion, ms.cord, ms.heads) == (1, (), 2)
    spine = next((DEMO_DIR / STEP1).glob("*/dataset.json"))
    with pytest.raises(WeightsError, match="not a lesion model"):
        read_labels(spine)


def test_folds_are_ensembled_as_nnunet_does(tmp_path):
    """Two folds: the ensemble's sigmoid is that of the mean of the folds' logits."""
    import torch

    folder = build_lesion_model(tmp_path, folds=(0, 1))
    weights = resolve_lesion_model(folder)
    assert [p.parent.name for p in weights.checkpoints] == ["fold_0", "fold_1"]
    cpu = torch.device("cpu")
    image = _image()[None]
    probs = [
        NnUNetModel.load(folder, cpu, threads=1, checkpoints=[c]).predict(
            image, return_probabilities=True
        )[1]
        for c in weights.checkpoints
    ]
    both = NnUNetModel.load(folder, cpu, threads=1, checkpoints=weights.checkpoints)
    ensemble = both.predict(image, return_probabilities=True)[1]
    inside = (probs[0] > 1e-4) & (probs[0] < 1 - 1e-4) & (probs[1] > 1e-4) & (probs[1] < 1 - 1e-4)

    p0, p1 = probs[0][inside], probs[1][inside]
    mean_logit = (np.log(p0 / (1 - p0)) + np.log(p1 / (1 - p1))) / 2
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ensemble[inside], 1 / (1 + np.exp(-mean_logit)), atol=2e-3)
    model = LesionModel(weights, "cpu", threads=1)
    lesion, cord = model.predict(_image(), (1.0, 1.0, 1.0))
    assert lesion.shape == cord.shape == _image().shape and not (lesion & ~cord).any()


def test_wrong_number_of_outputs_is_refused_in_one_line(tmp_path):
    folder = build_lesion_model(tmp_path, outputs=3)  # dataset.json declares 2 regions
    weights = resolve_lesion_model(folder)
    with pytest.raises(WeightsError) as err:
        LesionModel(weights, "cpu", threads=1)
    assert "\n" not in str(err.value) and "do not fit" in str(err.value)


def test_install_from_zip_and_folder_then_verify(tmp_path):
    src = build_lesion_model(tmp_path / "src", "model_SCIsegV2_demo", folds=(0, 1))
    archive = tmp_path / "model_SCIsegV2_demo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent))  # the zip keeps its top folder
    dest = tmp_path / "weights" / "lesion"
    installed = install_lesion_model(archive, dest)
    assert installed.folder == dest / "model_SCIsegV2_demo" and len(installed.checkpoints) == 2
    manifest = json.loads((installed.folder / "manifest.json").read_text())
    assert manifest["zip"]["name"] == archive.name and len(manifest["files"]) == 4
    with pytest.raises(WeightsError, match="already installed"):
        install_lesion_model(archive, dest)
    again = install_lesion_model(src, dest, force=True)  # a folder works too
    assert again.sha256 == installed.sha256
    # A changed byte, then a truncated file: refused in one line naming the file.
    ckpt = again.checkpoints[1]
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{ckpt}: SHA-256 differs"):
        resolve_lesion_model(again.folder)
    ckpt.write_bytes(bytes(data[:100]))
    with pytest.raises(WeightsError, match="changed or truncated"):
        resolve_lesion_model(again.folder)


def test_bad_sources_are_refused(tmp_path):
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(WeightsError, match="corrupt or truncated zip"):
        install_lesion_model(bad_zip, tmp_path / "dest")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no <Trainer>__<Plans>__<Config> folder"):
        install_lesion_model(empty, tmp_path / "dest")
    folder = build_lesion_model(tmp_path, "nofold")
    shutil.rmtree(folder / TRAINER / "fold_0")
    with pytest.raises(WeightsError, match="no fold_"):
        resolve_lesion_model(folder)


def test_spineseg_weights_lesion_installs_verifies_and_refuses(tmp_path, capsys):
    from bids_app.cli.main import main

    src = build_lesion_model(tmp_path / "src", "model_ms_demo", MS_LABELS, folds=(0, 1, 2))
    dest = tmp_path / "lesion"
    assert main(["weights", "--lesion", "--from", str(src), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"--lesion-model {dest / 'model_ms_demo'}" in out
    assert main(["weights", "--lesion", "--verify", "--dest", str(dest / "model_ms_demo")]) == 0
    assert "3 fold(s)" in capsys.readouterr().out
    ckpt = dest / "model_ms_demo" / TRAINER / "fold_2" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:-1])
    assert main(["weights", "--lesion", "--verify", "--dest", str(dest / "model_ms_demo")]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed or truncated" in err[0]
    assert main(["weights", "--lesion"]) == 64  # lesion models are never downloaded
