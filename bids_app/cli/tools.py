"""Subcommands beside the BIDS App: `segment` (one file), `weights`, `phantoms`, `review`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nibabel import Nifti1Image

from bids_app.bids.derivatives import OUTPUTS, output_name, write_outputs
from bids_app.bids.stamps import source_stem
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import EngineResult
from bids_app.lesions.outputs import write_lesion_outputs
from bids_app.lesions.participant import resolve_lesion_runner
from bids_app.lesions.run import LesionRunner, spine_for_lesions
from bids_app.nnunet.weights import WeightsError
from bids_app.plumbing.atomic import make_dir
from bids_app.plumbing.errors import ExitCode, UserError, without_name
from bids_app.plumbing.logs import say
from bids_app.run.segmentation import (
    EngineFactory,
    ImageCrash,
    ImageFailure,
    create_engine,
    load_image,
    resolve_model,
    segment_image,
)


def _segment_lesions(
    runner: LesionRunner, out: Path, src: Path, img: Nifti1Image, result: EngineResult
) -> list[Path]:
    """Lesions of the one image, placed on its final (else step-1) labels, beside them."""
    spine_key, spine, warnings = spine_for_lesions(result.native)
    try:
        lesions = runner.segment(img, spine, device=result.device)  # where the spine ran
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    result.warnings += [f"lesions: {w}" for w in warnings]
    sources = [src.resolve().as_uri()]
    if spine is not None:
        spec = next(o for o in OUTPUTS if o.key == spine_key)
        sources.append(
            (out / output_name(source_stem(src.name), spec, desc=None, iso=False)).as_uri()
        )
    written = write_lesion_outputs(
        out, src.name, None, lesions, runner.weights, sources=sources, warnings=warnings
    )
    say(f"{src.name}: {len(lesions.report.rows)} lesion(s)")
    return [out / rel for rel in written]


def run_segment(args, engine_factory: EngineFactory) -> int:
    """Segment one NIfTI file into OUTPUT_DIR/<name>_seg-spine_dseg.nii.gz etc. (no BIDS)."""
    src: Path = args.input
    if not src.name.endswith((".nii", ".nii.gz")):
        raise UserError(ExitCode.USAGE, f"{src}: expected a .nii or .nii.gz file")
    for path, what in ((src, "input image"), (args.loc, "localizer labels")):
        if path is not None and not path.is_file():
            raise UserError(ExitCode.NO_INPUT, f"{path}: {what} not found")
    out = args.output_dir.expanduser().resolve()
    make_dir(out, "output folder")
    weights, model = resolve_model(args.weights)
    # A bad lesion model stops here (exit 78), before any network runs.
    lesions = resolve_lesion_runner(args.lesion_model, (), args.omp_nthreads)
    engine = create_engine(engine_factory, weights, args.device, args.omp_nthreads)
    options = SegmentOptions(
        step1_only=args.step1,
        iso=args.iso,
        assume_top_disc=args.assume_top_disc,
        tile_step=args.tile_step,
        precision=args.precision,
    )
    try:
        img = load_image(src)
        loc = load_image(args.loc) if args.loc else None
        result = segment_image(engine, img, options, name=src.name, loc=loc)
    except ImageCrash as e:  # a bug: main() makes it one line, exit 70 and a crash file
        raise (e.__cause__ or e) from None
    except ImageFailure as e:
        raise UserError(ExitCode.FAILED, f"{src.name}: {without_name(str(e), src.name)}") from e
    finally:
        engine.close()
    uri = src.resolve().as_uri()
    try:
        written = write_outputs(
            out,
            source_stem(src.name),
            result,
            model,
            desc=None,
            sources=[uri] + ([args.loc.resolve().as_uri()] if args.loc else []),
            spatial_reference=uri,
        )
    except OSError as e:
        raise UserError(
            ExitCode.IO_ERROR, f"{e.filename or out}: cannot write ({e.strerror})"
        ) from e
    if lesions is not None:
        written += _segment_lesions(lesions, out, src, img, result)
    say(*(str(p) for p in written if p.name.endswith((".nii.gz", ".tsv"))))  # images, tables
    for warning in result.warnings:
        say(f"{src.name}: warning: {warning}")
    if not result.errors:
        return ExitCode.OK
    # What was written is usable; the errors say what is missing and what to try.
    kept = "step-1 labels, no final labels" if "levels" in result.native else "cord and canal only"
    say(f"{src.name}: partial result ({kept}): {'; '.join(result.errors)}")
    return ExitCode.PARTIAL


def run_weights(args) -> int:
    """Install a weights release (download, zip, folder or URL) or verify an installation."""
    from bids_app.nnunet import weights as w

    if args.lesion:
        from bids_app.lesions.weights import run_lesion_weights

        return run_lesion_weights(args.source, args.dest, verify=args.verify, force=args.force)
    dest = Path(args.dest or os.environ.get(w.ENV_VAR) or w.default_weights_dir()).expanduser()
    try:
        if args.verify:
            ws = w.resolve_weights(dest, release=args.release)
            say(f"weights OK: {w.describe_release(ws.release)} in {ws.release_dir}")
            say(*(f"  {sha}  {name}" for name, sha in sorted(ws.sha256.items())))
            return ExitCode.OK
        ws = w.install_weights(
            dest,
            release=args.release,
            source=args.source,
            force=args.force,
            progress=sys.stderr.isatty(),
        )
    except w.WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    say(f"installed {w.describe_release(ws.release)} in {ws.release_dir}")
    missing = [name for name, path in (("step 1", ws.step1), ("step 2", ws.step2)) if path is None]
    if missing:
        say(f"still missing: {', '.join(missing)}; install its zip the same way")
        return ExitCode.OK
    if os.environ.get(w.ENV_VAR) is None and args.dest:
        say(f"use it with --weights {dest} or export {w.ENV_VAR}={dest}")
    return ExitCode.OK


PHANTOM_NAME = "SpineSeg synthetic spine phantoms"


def run_phantoms(args) -> int:
    """Write the synthetic BIDS dataset; refuses to write into an unrelated, non-empty folder."""
    from bids_app.phantom.bids_dataset import write_phantom_dataset

    out: Path = args.out_dir.expanduser().resolve()
    if out.is_dir() and any(out.iterdir()):
        try:
            name = json.loads((out / "dataset_description.json").read_text()).get("Name")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != PHANTOM_NAME:
            raise UserError(ExitCode.USAGE, f"{out}: exists, is not empty and is not a phantom set")
    bodies = None
    if args.deformity or args.slip:
        from bids_app.phantom.bids_dataset import BodyTruth
        from bids_app.vertebrae.grades import HEIGHT_SHARES
        from bids_app.vertebrae.parts import ENDPLATE_MM, PARTS

        bodies = BodyTruth(
            tuple(args.deformity), tuple(args.slip), PARTS, ENDPLATE_MM, HEIGHT_SHARES
        )
    try:
        extra = {"bodies": bodies} if bodies is not None else {}  # plain sets: as before
        written = write_phantom_dataset(out, args.subjects, args.seed, args.lesions, **extra)
    except ValueError as e:  # a deformity or slip this anatomy cannot take
        raise UserError(ExitCode.USAGE, str(e)) from e
    except OSError as e:
        raise UserError(
            ExitCode.CANT_CREATE, f"{e.filename or out}: cannot write ({e.strerror})"
        ) from e
    say(f"wrote {len(written)} phantom images to {out} (ground truth in derivatives/truth)")
    return ExitCode.OK


def run_review(args) -> int:
    """Open (or print) the viewer commands for every image of `group_worklist.tsv`."""
    import subprocess

    from bids_app.qc.worklist import review

    try:
        lines, commands = review(args.output_dir, args.bids_dir, args.viewer, args.print_only)
    except ValueError as e:
        raise UserError(ExitCode.NO_INPUT, str(e)) from e
    say(*lines)
    for command in commands:  # one image at a time: the next opens when the viewer closes
        subprocess.run(command, check=False)
    return ExitCode.OK
