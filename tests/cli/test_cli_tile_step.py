"""--tile-step, --precision and --fast: the opt-in fast mode is checked, reaches the engine,
is stamped, and is a different result."""

from __future__ import annotations

import pytest
from bidsapp_testkit import FakeEngineFactory

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.cli.main import main

IMAGE = "sub-02_T1w.nii.gz"


class OptionsSeen(FakeEngineFactory):
    """Fake engines that remember the tile step of every image they were asked to segment."""

    tile_steps: list[float]
    precisions: list[str]

    def __call__(self, weights, device, threads):
        engine = super().__call__(weights, device, threads)
        self.tile_steps = getattr(self, "tile_steps", [])
        self.precisions = getattr(self, "precisions", [])
        segment = engine.segment

        def seen(img, options, **kwargs):
            self.tile_steps.append(options.tile_step)
            self.precisions.append(options.precision)
            return segment(img, options, **kwargs)

        engine.segment = seen  # type: ignore[method-assign]
        return engine


def run(capsys, dataset, out, weights, *extra):
    factory = OptionsSeen()
    argv = [dataset, out, "participant", "--skip-bids-validation", "--weights", weights, *extra]
    rc = main([str(a) for a in argv], engine_factory=factory)
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, err, factory


def test_default_is_the_reference_step_and_fast_mode_is_stamped_and_recomputed(
    capsys, dataset, weights, tmp_path
):
    out = tmp_path / "out"
    rc, _, factory = run(capsys, dataset, out, weights, "--participant-label", "02")
    assert rc == 0
    assert factory.tile_steps == [0.5, 0.5]  # both images of sub-02
    assert read_stamp(stamp_path(out, IMAGE))["options"]["tile_step"] == 0.5

    rc, err, factory = run(
        capsys, dataset, out, weights, "--participant-label", "02", "--tile-step", "1"
    )
    assert rc == 0
    assert "made with other options" in err  # a fast-mode result never passes as the default
    assert factory.tile_steps == [1.0, 1.0]
    assert read_stamp(stamp_path(out, IMAGE))["options"]["tile_step"] == 1.0


@pytest.mark.parametrize("value", ["0.4", "1.01", "nan", "fast", "-1"])
def test_out_of_range_tile_step_is_a_usage_error(capsys, value):
    rc = main(["bids", "out", "participant", "--tile-step", value])
    _, err = capsys.readouterr()
    assert rc == 64
    assert f"{value!r} is not a number between 0.5 and 1.0" in err


def test_precision_and_fast_reach_the_engine_and_the_stamp(capsys, dataset, weights, tmp_path):
    out = tmp_path / "out"
    rc, _, factory = run(capsys, dataset, out, weights, "--participant-label", "02")
    assert rc == 0 and factory.precisions == ["auto", "auto"]
    assert "precision" not in read_stamp(stamp_path(out, IMAGE))["options"]  # old hashes hold

    rc, err, factory = run(
        capsys, dataset, out, weights, "--participant-label", "02", "--precision", "fp32"
    )
    assert rc == 0 and "made with other options" in err
    assert factory.precisions == ["fp32", "fp32"]
    assert read_stamp(stamp_path(out, IMAGE))["options"]["precision"] == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_fast_is_bf16_where_it_is_native_and_nothing_elsewhere(
    capsys, dataset, weights, tmp_path, monkeypatch, native
):
    monkeypatch.setattr("bids_app.nnunet.model.cpu_bf16_native", lambda: native)
    out = tmp_path / "out"
    argv = ("--participant-label", "02", "--device", "cpu", "--fast")
    rc, err, factory = run(capsys, dataset, out, weights, *argv)
    assert rc == 0
    assert factory.tile_steps == [0.5, 0.5]  # larger steps failed the agreement bar
    want = "bf16" if native else "auto"
    assert factory.precisions == [want, want]
    options = read_stamp(stamp_path(out, IMAGE))["options"]
    assert options["tile_step"] == 0.5 and options.get("precision", "auto") == want
    said = [line for line in err.splitlines() if "no bfloat16 unit" in line]
    assert len(said) == (0 if native else 1)
    assert native or "--fast changes nothing here" in said[0]


def test_bf16_on_a_cpu_without_it_warns_in_one_line(
    capsys, dataset, weights, tmp_path, monkeypatch
):
    monkeypatch.setattr("bids_app.nnunet.model.cpu_bf16_native", lambda: False)
    argv = ("--participant-label", "02", "--device", "cpu", "--precision", "bf16")
    rc, err, factory = run(capsys, dataset, tmp_path / "out", weights, *argv)
    assert rc == 0 and factory.precisions == ["bf16", "bf16"]
    assert len([ln for ln in err.splitlines() if "emulated and slower than fp32" in ln]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fast", "--tile-step", "0.5"], "--fast sets --tile-step and --precision"),
        (["--fast", "--precision", "fp32"], "--fast sets --tile-step and --precision"),
        (["--precision", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_conflicting_or_unknown_precision_is_a_usage_error(capsys, extra, message):
    rc = main(["bids", "out", "participant", *extra])
    _, err = capsys.readouterr()
    assert rc == 64
    assert message in err
