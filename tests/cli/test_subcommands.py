"""`spineseg segment`, `spineseg weights` and `spineseg phantoms`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bidsapp_testkit import FakeEngineFactory, fake_labels, tiny_image

from bids_app.cli.main import main


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "in" / "my_scan.nii.gz"
    path.parent.mkdir()
    nib.save(tiny_image(), path)
    return path


def test_segment_one_file_names_outputs_after_the_input(scan, tmp_path, weights, capsys):
    out = tmp_path / "seg"
    factory = FakeEngineFactory()
    rc = main(
        ["segment", str(scan), str(out), "--weights", str(weights), "--iso"], engine_factory=factory
    )
    stdout = capsys.readouterr().out
    assert rc == 0 and len(factory.engines) == 1
    images = sorted(p.name for p in out.glob("*.nii.gz"))
    assert images == sorted(
        [
            "my_scan_seg-spine_dseg.nii.gz",
            "my_scan_seg-step1_dseg.nii.gz",
            "my_scan_seg-discmarkers_dseg.nii.gz",
            "my_scan_label-cord_probseg.nii.gz",
            "my_scan_label-canal_probseg.nii.gz",
            "my_scan_seg-spine_res-1mm_dseg.nii.gz",
            "my_scan_seg-step1_res-1mm_dseg.nii.gz",
            "my_scan_seg-discmarkers_res-1mm_dseg.nii.gz",
            "my_scan_res-1mm_label-cord_probseg.nii.gz",
            "my_scan_res-1mm_label-canal_probseg.nii.gz",
        ]
    )
    final = nib.load(out / "my_scan_seg-spine_dseg.nii.gz")
    assert final.shape == tiny_image().shape
    assert np.array_equal(np.asarray(final.dataobj), fake_labels(final.shape))
    meta = json.loads((out / "my_scan_seg-spine_dseg.json").read_text())
    assert meta["Sources"] == [scan.resolve().as_uri()]
    assert str(out / "my_scan_seg-spine_dseg.nii.gz") in stdout


def test_segment_step1_and_localizer(scan, tmp_path, weights, capsys):
    loc = tmp_path / "loc_dseg.nii.gz"
    nib.save(nib.Nifti1Image(fake_labels((8, 10, 12)), np.eye(4)), loc)
    factory = FakeEngineFactory()
    rc = main(
        [
            "segment",
            str(scan),
            str(tmp_path / "o"),
            "--step1",
            "--loc",
            str(loc),
            "--weights",
            str(weights),
        ],
        engine_factory=factory,
    )
    capsys.readouterr()
    assert rc == 0 and factory.calls == [("my_scan.nii.gz", True)]
    assert not list((tmp_path / "o").glob("*seg-spine*"))


def test_segment_errors(scan, tmp_path, weights, capsys):
    rc = main(
        ["segment", str(tmp_path / "nope.nii.gz"), str(tmp_path / "o"), "--weights", str(weights)]
    )
    assert rc == 66 and "nope.nii.gz: input image not found" in capsys.readouterr().err
    other = tmp_path / "scan.mha"
    other.write_text("x")
    rc = main(["segment", str(other), str(tmp_path / "o"), "--weights", str(weights)])
    assert rc == 64 and "expected a .nii or .nii.gz file" in capsys.readouterr().err
    rc = main(
        ["segment", str(scan), str(tmp_path / "o"), "--weights", str(weights)],
        engine_factory=FakeEngineFactory(fail={"my_scan.nii.gz"}),
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        "spineseg: error: my_scan.nii.gz: step 1 found no spine structure in the image"
    )


def test_segment_partial_result_says_which_image_and_what_to_do(scan, tmp_path, weights, capsys):
    rc = main(
        ["segment", str(scan), str(tmp_path / "o"), "--weights", str(weights)],
        engine_factory=FakeEngineFactory(partial={"my_scan.nii.gz"}),
    )
    out, err = capsys.readouterr()
    assert rc == 3
    assert "error:" not in out + err
    line = next(ln for ln in out.splitlines() if ln.startswith("my_scan.nii.gz: partial"))
    assert line.startswith("my_scan.nii.gz: partial result (cord and canal only): step 1 labeling")
    assert "--assume-top-disc" in line and "--loc" in line
    assert (tmp_path / "o" / "my_scan_label-cord_probseg.nii.gz").is_file()


def test_weights_verify_and_install_from_a_folder(weights, tmp_path, capsys):
    rc = main(["weights", "--verify", "--dest", str(weights)])
    out = capsys.readouterr().out
    assert rc == 0 and "weights OK" in out
    assert "fold_0/checkpoint_final.pth" in out
    dest = tmp_path / "installed"
    rc = main(["weights", "--from", str(weights), "--dest", str(dest), "--release", "rtest"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("installed weights of unknown origin (release `unknown`")
    assert f"in {dest / 'rtest'}\n" in out  # --release names the folder, proves nothing
    assert (dest / "rtest" / "Dataset101_TotalSpineSeg_step1").is_dir()
    rc = main(["weights", "--verify", "--dest", str(dest)])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("weights OK: weights of unknown origin")
    assert f"in {dest / 'rtest'}\n" in out
    rc = main(["weights", "--verify", "--dest", str(tmp_path / "empty")])
    assert rc == 78 and "weights folder not found" in capsys.readouterr().err


def test_phantoms_refuses_an_unrelated_folder_and_passes_its_options(tmp_path, capsys, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    assert main(["phantoms", str(busy)]) == 64
    assert "not a phantom set" in capsys.readouterr().err
    assert (busy / "thesis.tex").read_text() == "precious"

    seen = {}

    def fake_writer(out, n_subjects, seed, lesions):
        seen.update(out=out, n=n_subjects, seed=seed, lesions=lesions)
        return [out / "a.nii.gz", out / "b.nii.gz"]

    monkeypatch.setattr("bids_app.phantom.bids_dataset.write_phantom_dataset", fake_writer)
    new = str(tmp_path / "new")
    assert main(["phantoms", new, "--subjects", "2", "--seed", "5", "--lesions"]) == 0
    assert seen == {"out": (tmp_path / "new").resolve(), "n": 2, "seed": 5, "lesions": True}
    assert "wrote 2 phantom images" in capsys.readouterr().out


def test_assume_top_disc_reaches_the_engine_and_bad_names_are_usage_errors(
    scan, tmp_path, weights, capsys
):
    factory = FakeEngineFactory()
    args = ["segment", str(scan), str(tmp_path / "o"), "--weights", str(weights)]
    assert main([*args, "--assume-top-disc", "c2-c3"], engine_factory=factory) == 0
    assert factory.engines[0].top_discs == [63]
    assert main([*args, "--assume-top-disc", "C9-C10"], engine_factory=factory) == 64
    assert "unknown disc 'C9-C10'" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["engine", "writer"])
def test_a_bug_in_a_subcommand_exits_70_with_a_crash_file(
    scan, tmp_path, weights, capsys, monkeypatch, where
):
    from bids_app.cli import tools

    raises = {"my_scan.nii.gz": KeyError("sidecar")} if where == "engine" else None
    if where == "writer":
        monkeypatch.setattr(tools, "write_outputs", lambda *args, **kwargs: {}["sidecar"])
    out = tmp_path / "o"
    rc = main(
        ["segment", str(scan), str(out), "--weights", str(weights)],
        engine_factory=FakeEngineFactory(raises=raises),
    )
    err = capsys.readouterr().err
    assert rc == 70 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("spineseg: error: unexpected KeyError: 'sidecar' (a SpineSeg bug")
    (crash,) = (out / "logs").glob("crash-*-segment.txt")
    assert str(crash) in last and "KeyError: 'sidecar'" in crash.read_text()
