"""The shipped demo models: official layout, small, hashes as documented, loadable by stock
nnU-Net (its own trainer lookup and predictor), and they segment a held-out phantom."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from bids_app.engine import geometry as geo
from bids_app.phantom.render import Acquisition, render_phantom
from bids_app.phantom.targets import step1_target

DEMO = Path(__file__).parents[2] / "bids_app" / "demo_models"
FOLDERS = {
    "Dataset101_TotalSpineSeg_step1": 1,
    "Dataset102_TotalSpineSeg_step2": 2,
}


def _trainer_dir(dataset: str) -> Path:
    return DEMO / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.mark.parametrize("dataset", FOLDERS)
def test_official_layout_small_and_hashes_documented(dataset: str) -> None:
    folder = _trainer_dir(dataset)
    readme = (DEMO / "README.md").read_text()
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        path = folder / name
        assert path.is_file(), path
        assert path.stat().st_size <= 10 * 1024 * 1024
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rel = path.relative_to(DEMO).as_posix()
        assert re.search(rf"{digest}\s+{re.escape(rel)}", readme), f"{rel}: hash not in README"


@pytest.mark.slow
def test_stock_nnunet_loads_and_segments_a_held_out_phantom() -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(_trainer_dir("Dataset101_TotalSpineSeg_step1")), (0,), "checkpoint_final.pth"
    )
    ph = render_phantom(5300, Acquisition(fov="cervical", lr_extent=40.0))
    iso = geo.resample_to_iso(geo.to_canonical(ph.image))
    data = np.asanyarray(iso.dataobj).astype(np.float32).transpose(2, 1, 0)[None]
    seg = predictor.predict_single_npy_array(data, {"spacing": [1.0, 1.0, 1.0]}).transpose(2, 1, 0)
    truth = step1_target(geo.labels_onto(np.asarray(ph.labels.dataobj), ph.labels.affine, iso))
    # Regions overwrite in order: cord (9) over canal (8), C1 (7) over vertebrae (6).
    for raw in (1, 6, 8, 9):
        pred, true = seg == raw, truth == raw
        dice = 2 * (pred & true).sum() / (pred.sum() + true.sum())
        assert dice > 0.5, (raw, dice)
    assert set(np.unique(seg).tolist()) <= set(range(10))


def test_training_code_exports_where_the_runtime_loads() -> None:
    """The training code lives outside the installed package (training/); its default export
    folder must still be the one `--weights demo` reads, or a retrain would ship nothing."""
    from bids_app.nnunet.weights import DEMO_DIR
    from training.demo_models import train

    assert train.DEMO_DIR.resolve() == DEMO_DIR.resolve()
    assert not list(DEMO_DIR.glob("train*.py")), "training code is back in the runtime package"


def _forced_patch_starts(loader_cls: type, draws: int = 40) -> set[tuple[int, ...]]:
    """Lower corners of patches forced onto a single C2-C3 voxel at (50, 50, 50)."""
    loader = loader_cls.__new__(loader_cls)  # only what get_bbox reads, no dataset
    loader.patch_size = np.array([40, 40, 40])  # the enlarged patch, before augmentation
    loader.final_patch_size = np.array([32, 32, 32])
    loader.need_to_pad = np.array([8, 8, 8])
    loader.has_ignore = False
    loader.annotated_classes_key = (1, 2)
    np.random.seed(0)
    starts = set()
    for _ in range(draws):
        lbs, ubs = loader.get_bbox(
            np.array([100, 100, 100]), True, {2: np.array([[0, 50, 50, 50]])}
        )
        assert all(lo <= 50 < hi for lo, hi in zip(lbs, ubs, strict=True))
        starts.add(tuple(lbs))
    return starts


def test_landmark_patches_are_shifted_except_for_the_centred_step2_base() -> None:
    """The recipe relies on it: the step-2 base run had patches centred on the landmark (the
    cue the network must not learn), every other run moves them."""
    from training.demo_models import landmark_sampling as ls

    assert _forced_patch_starts(ls.Step2CentredLoader) == {(30, 30, 30)}
    for cls in (ls.Step1LandmarkLoader, ls.Step2LandmarkLoader):
        starts = np.array(sorted(_forced_patch_starts(cls)))
        assert len(starts) > 20
        # The voxel stays EDGE voxels inside the final patch, which sits centred in the patch.
        margin = (40 - 32) // 2 + ls.EDGE
        assert (50 - starts >= margin).all() and (50 - starts <= 40 - margin).all()


def test_readme_states_the_recipe_that_export_writes() -> None:
    """`train.py all` runs RECIPE; the demo README must list the same runs for each step."""
    from training.demo_models import train

    readme = (DEMO / "README.md").read_text()
    block = readme.split("<!-- demo-training:start -->\n")[1].split("\n<!-- demo-training:end -->")[
        0
    ]
    assert block == "\n".join(train._history(d) for d in (train.STEP1, train.STEP2))
    assert [r.name for r in train.RECIPE if r.init] and all(
        train.RUNS[r.init].dataset == r.dataset
        and train.RECIPE.index(train.RUNS[r.init]) < train.RECIPE.index(r)
        for r in train.RECIPE
        if r.init
    ), "a run starts from a later run or from the other step"


def test_deformed_training_phantoms_are_training_seeds_of_every_shape_and_grade() -> None:
    """Step 2's fine-tune on deformed bodies must draw from the training seeds only (the
    vertebral-body benchmark uses 8000+, demo accuracy 5000+), the same cases every time, with
    deformities at bodies the field of view shows and slips the phantom accepts."""
    from bids_app.phantom.anatomy import random_anatomy
    from bids_app.phantom.render import fov_s_range
    from bids_app.plumbing.labels import VERTEBRAE
    from training.demo_models import train

    cases = [train.deformed_case(k) for k in range(train.N_DEFORMED)]
    assert cases == [train.deformed_case(k) for k in range(train.N_DEFORMED)]
    seeds = [seed for seed, *_ in cases]
    normal = {train.case_acquisition(i)[0] for i in range(train.N_CASES)}
    assert all(1000 <= s <= 1999 for s in seeds) and not normal & set(seeds)
    drawn = [d for *_, deformities, _ in cases for d in deformities]
    assert {(d.shape, d.grade) for d in drawn} == {
        (shape, grade) for shape in ("wedge", "biconcave", "crush") for grade in (1, 2, 3)
    }
    assert 0 < sum(bool(slips) for *_, slips in cases) < len(cases)
    for seed, acq, deformities, slips in cases:
        assert 1 <= len(deformities) <= 3
        assert random_anatomy(seed, deformities=deformities, slips=slips).deformities
        normal_anat = random_anatomy(seed)
        lo, hi = fov_s_range(normal_anat, acq.fov)
        for d in deformities:
            seg = next(s for s in normal_anat.segments if VERTEBRAE.get(s.label) == d.level)
            assert lo <= seg.s_top and seg.s_bot <= hi, (seed, d.level)
