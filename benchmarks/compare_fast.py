"""Does --fast agree with the default on YOUR images and weights? (issue 30, item 3)

    python -m benchmarks.compare_fast IMAGE [IMAGE ...] [--weights DIR] [--device cpu]
                                      [--threads N] [--json OUT.json]
                                      [--tile-step F] [--precision P]

Random-weight stand-ins say nothing about accuracy, and the demo models are not the official
ones; so a lab decides with its own data. Each image is segmented twice by SpineSeg's engine
with the same weights (default: the installed TotalSpineSeg weights), once with the default
options and once with the options `--fast` picks on this machine (its tile step, which also
fits the patch to images smaller than it, and bfloat16 where the CPU computes it natively;
docs/expect.md). Printed per image: the time of both, the Dice
of every final label between the two, and whether the level labels are identical (same
labels present, no structure renamed, same landmarks and level markers); then the lowest
Dice pooled over the images per label and the share of images with identical levels.
--json writes all of it. Nothing is written next to the images. --tile-step and --precision
compare another fast variant instead (e.g. --tile-step 1.0 --precision bf16, faster than
--fast and further from the default with the demo models).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.fast import DICE_TARGET, LEVELS_TARGET, compare_results
from bids_app.engine.options import FAST_PRECISION, FAST_TILE_STEP, SegmentOptions
from bids_app.nnunet import PRECISIONS, REFERENCE_PRECISION


def fast_options(device: str) -> SegmentOptions:
    """What `--fast` resolves to for this device on this machine (see bids_app.cli.parser)."""
    from bids_app.nnunet.model import cpu_bf16_native, resolve_device

    on_cpu = resolve_device(device).type == "cpu"
    precision = FAST_PRECISION if on_cpu and cpu_bf16_native() else REFERENCE_PRECISION
    return SegmentOptions(tile_step=FAST_TILE_STEP, precision=precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", type=Path, help=".nii/.nii.gz images")
    ap.add_argument("--weights", help="weights folder (default: the installed weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--tile-step", type=float, help="compare this tile step instead")
    ap.add_argument("--precision", choices=PRECISIONS, help="compare this precision instead")
    args = ap.parse_args()

    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.weights import resolve_weights

    engine = SpineSegEngine(resolve_weights(args.weights), device=args.device, threads=args.threads)
    fast = fast_options(args.device)
    fast = SegmentOptions(
        tile_step=fast.tile_step if args.tile_step is None else args.tile_step,
        precision=args.precision or fast.precision,
    )
    print(
        f"default: tile step 0.5, precision auto; fast: tile step {fast.tile_step}, "
        f"precision {fast.precision}"
    )
    rows = []
    for path in args.images:
        img = nib.load(path)
        res, secs = {}, {}
        for tag, options in (("default", SegmentOptions()), ("fast", fast)):
            t0 = time.perf_counter()
            res[tag] = engine.segment(img, options, name=path.name)
            secs[tag] = time.perf_counter() - t0
        row = {"image": str(path), "seconds": secs, **compare_results(res["default"], res["fast"])}
        rows.append(row)
        worst = min(row.get("dice", {}).items(), key=lambda kv: kv[1], default=("-", 1.0))
        print(
            f"{path.name}: default {secs['default']:.1f} s, fast {secs['fast']:.1f} s "
            f"({secs['fast'] / secs['default']:.2f}x); {row['compared']} labels: lowest Dice "
            f"{worst[1]:.3f} ({worst[0]}); levels identical: {row['levels_identical']}"
            + (f"; renamed: {row['renamed']}" if row.get("renamed") else "")
        )
    pooled: dict[str, list[int]] = {}
    for row in rows:
        for name, (both, na, nb) in row.get("overlap", {}).items():
            acc = pooled.setdefault(name, [0, 0, 0])
            for i, v in enumerate((both, na, nb)):
                acc[i] += v
    dice = {n: 2 * b / (na + nb) if na + nb else 1.0 for n, (b, na, nb) in pooled.items()}
    share = float(np.mean([r["levels_identical"] for r in rows]))
    below = sorted(n for n, d in dice.items() if d < DICE_TARGET)
    print(
        f"{len(rows)} image(s): labels with pooled Dice below {DICE_TARGET}: "
        f"{', '.join(below) or 'none'}; level labels identical on {share:.0%} "
        f"(SpineSeg's bar: {LEVELS_TARGET:.0%})"
    )
    if args.json:
        summary = {"fast_options": fast.record(), "pooled_dice_per_label": dice}
        summary.update(share_levels_identical=share, rows=rows)
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
