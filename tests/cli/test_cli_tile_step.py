"""--tile-step: the opt-in fast mode is checked, reaches the engine, and is a different result."""

from __future__ import annotations

import pytest
from bidsapp_testkit import FakeEngineFactory

from bids_app.bids.stamps import read_stamp, stamp_path
from bids_app.cli.main import main

IMAGE = "sub-02_T1w.nii.gz"


class OptionsSeen(FakeEngineFactory):
    """Fake engines that remember the tile step of every image they were asked to segment."""

    tile_steps: list[float]

    def __call__(self, weights, device, threads):
        engine = super().__call__(weights, device, threads)
        self.tile_steps = getattr(self, "tile_steps", [])
        segment = engine.segment

        def seen(img, options, **kwargs):
            self.tile_steps.append(options.tile_step)
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
