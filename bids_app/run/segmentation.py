"""Segmenting one image: the engine, reading the file, running it, and what can go wrong.

Every per-image problem becomes an `ImageFailure` with a one-line reason (the image fails
alone, the run goes on); what concerns every image (bad weights) stops the run with its exit
code. Shared by the participant level and `spineseg segment`.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib

from bids_app.bids.derivatives import ModelInfo
from bids_app.bids.sources import content_problem
from bids_app.engine.image_checks import check_header
from bids_app.engine.options import SegmentOptions
from bids_app.engine.result import Engine, EngineError, EngineResult
from bids_app.nnunet.weights import WeightsError, resolve_weights
from bids_app.plumbing.errors import ExitCode, UserError, one_line, without_name
from bids_app.run.scheduling import DevicePool

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Engine]  # (weights, device specs, threads per network) -> engine


def default_engine_factory(weights, devices: Sequence[str], threads: int | None) -> Engine:
    """The real engine: one network worker per device; imported here so that --help, resume
    and tests need no torch."""
    from bids_app.engine.networks import Networks, PooledNetworks
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.nnunet.model import resolve_devices

    # Step 1 is loaded at once (every image needs it); step 2 on first use.
    pool = DevicePool(
        resolve_devices(devices), lambda d: Networks(weights, d, threads).warm("step1")
    )
    return SpineSegEngine(weights, threads=threads, predictor=PooledNetworks(pool))


def resolve_model(weights_arg: str | None):
    """The verified weights and their provenance; missing or corrupt weights exit 78."""
    try:
        weights = resolve_weights(weights_arg)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    return weights, ModelInfo.from_weights(weights)


class ImageFailure(Exception):
    """One image cannot be segmented; the run goes on."""


class ImageCrash(ImageFailure):
    """An unexpected error (a bug or a library failure): its traceback goes to a crash file."""


class ImageOutOfMemory(ImageFailure):
    """Out of memory: depends on the machine and its load, so the next run retries it."""


# nibabel's messages name the full path and end oddly ("got 0 bytes from \n - could the
# file be damaged?" for a .nii.gz); the reason gets the fact, in one line.
_TRUNCATED_RE = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")
_NOT_GZIP_RE = re.compile(r"is not a gzip file")
_UNKNOWN_TYPE_RE = re.compile(r"Cannot work out file type")


def read_problem(error: BaseException) -> str:
    """What is wrong with a file that nibabel cannot read, in one line without its path."""
    text = str(error)
    if m := _TRUNCATED_RE.search(text):
        return f"truncated: {m.group(2)} of {m.group(1)} bytes of voxels"
    if _NOT_GZIP_RE.search(text):
        return "not a gzip file, although its name ends in .gz"
    if _UNKNOWN_TYPE_RE.search(text):
        return "not a NIfTI file (unknown header)"
    return one_line(error)


def create_engine(
    factory: EngineFactory, weights, devices: Sequence[str], threads: int | None
) -> Engine:
    """One engine per process; a device that cannot be used is a one-line error (exit 1)."""
    try:
        engine = factory(weights, devices, threads)
    except WeightsError as e:
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except (ValueError, EngineError) as e:
        raise UserError(
            ExitCode.FAILED,
            f"--device {','.join(devices)}: {one_line(e)} (containers need `--gpus all` "
            "with Docker or `--nv` with Apptainer for CUDA)",
        ) from e
    log.info("engine ready (device %s, threads %s)", engine.device, engine.threads)
    return engine


def load_image(path: Path) -> nib.Nifti1Image:
    """The image, opened read-only by nibabel (never written); unreadable = ImageFailure.

    A file without content (a dangling link, a git-annex pointer) is named as such: nibabel
    would only say that it cannot find or parse it.
    """
    if problem := content_problem(path):
        raise ImageFailure(f"{path.name}: {problem}")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise ImageFailure(f"{path.name}: cannot read the image ({read_problem(e)})") from e
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ImageFailure(f"{path.name}: not a NIfTI image ({type(img).__name__})")
    return img


def check_input_header(img: nib.Nifti1Image, name: str) -> None:
    """The engine's header checks (kind, grid, declared size against the file), before the
    memory estimate: it reads the header too, and a 2-D image or a header declaring terabytes
    over a small file must be named for what it is, not for the memory it would need."""
    try:
        check_header(img, name)
    except EngineError as e:
        raise ImageFailure(without_name(one_line(e), name)) from e


def segment_image(
    engine: Engine,
    img: nib.Nifti1Image,
    options: SegmentOptions,
    *,
    name: str,
    loc: nib.Nifti1Image | None = None,
    progress: Callable[[str], None] | None = None,
) -> EngineResult:
    """Run the engine on one loaded image; every per-image problem becomes an ImageFailure.

    Reasons do not repeat the image's name: the lines that show them name it already.
    """
    try:
        return engine.segment(
            img,
            options,
            loc=loc,
            name=name,
            progress=progress,
        )
    except WeightsError as e:  # models load on first use: bad weights stop the run (78)
        raise UserError(ExitCode.CONFIG, str(e)) from e
    except EngineError as e:
        raise ImageFailure(without_name(one_line(e), name)) from e
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise ImageFailure(f"cannot read the image data ({read_problem(e)})") from e
    except MemoryError as e:
        raise ImageOutOfMemory("out of memory (use fewer threads or a GPU)") from e
    except Exception as e:  # a bug must not cost the other images; the crash file keeps it
        if type(e).__name__ == "OutOfMemoryError":  # torch's, for CUDA (no torch import here)
            raise ImageOutOfMemory(f"out of GPU memory ({one_line(e)})") from e
        raise ImageCrash(f"unexpected {one_line(e, with_type=True)}") from e
