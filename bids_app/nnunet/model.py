"""One nnU-Net model, loaded once and reused for every image (docs/method.md §1.5).

The network is built from plans.json instead of through nnU-Net's trainer lookup: the official
TotalSpineSeg checkpoints name trainers (`nnUNetTrainerDAExtGPU`) that only exist after AugLab
patches the installed nnunetv2, and none of them changes the architecture. Prediction goes
through nnU-Net's own predictor so preprocessing, sliding window, resampling and region
handling are nnU-Net's, bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from bids_app.nnunet import REFERENCE_PRECISION, REFERENCE_TILE_STEP
from bids_app.nnunet.weights import WeightsError, find_checkpoint
from bids_app.plumbing.errors import one_line


def default_threads() -> int:
    """CPU cores this process may use (respects taskset/cgroup affinity, unlike cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(spec: str) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N` into a device; ValueError (one line) if it cannot be used."""
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise ValueError(f"device {spec!r}: CUDA is not available (torch {build}); use cpu")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device {spec!r}: only {count} CUDA device(s) visible")
        return torch.device("cuda", index)
    return torch.device("cuda")


def resolve_devices(specs: Sequence[str]) -> list[str]:
    """Device specs (see `bids_app.resources.parse_devices`) as concrete device names.

    `auto` is every visible GPU, else the CPU; `cuda` is every visible GPU (what
    CUDA_VISIBLE_DEVICES or `--gpus all` exposes). ValueError (one line) if one cannot be used.
    """
    names: list[str] = []
    for spec in specs:
        if spec == "auto":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            names += [f"cuda:{i}" for i in range(count)] or ["cpu"]
        elif spec == "cuda":
            resolve_device(spec)  # raises when CUDA cannot be used
            names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            names.append(str(resolve_device(spec)))
    return names


def cpu_bf16_native(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16).

    Without such a unit torch emulates bfloat16 with float32 arithmetic plus conversions,
    slower than float32 itself. Unknown (no /proc/cpuinfo, e.g. macOS) counts as no.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_native(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively (hence faster than float32) on `device`."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_bf16_native()


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Around one network forward: `auto` keeps nnU-Net's choice (float32 on CPU, its own
    float16 autocast on CUDA); `fp32` turns any autocast off; `bf16` autocasts to bfloat16."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != REFERENCE_PRECISION:
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


def network_strides(configuration: ConfigurationManager) -> list[int] | None:
    """Per axis (nnU-Net order), the product of the network's pooling strides: a patch must be
    a multiple of it for the decoder's skips to line up. None if the plans do not say."""
    strides = configuration.network_arch_init_kwargs.get("strides")
    if not strides:
        return None
    return [int(np.prod(axis)) for axis in zip(*strides, strict=True)]


def fitted_patch(
    image_shape: Sequence[int], patch: Sequence[int], strides: Sequence[int]
) -> list[int]:
    """The sliding-window patch for an image (all nnU-Net order): the planned patch, except
    along an axis where the image is smaller, there its size rounded up to the network's
    stride product. nnU-Net pads such an image up to the whole planned patch and computes
    the padding; a cervical image at 1 mm is smaller than the official patch on every axis."""
    return [
        min(int(p), -(-int(n) // int(d)) * int(d))
        for n, p, d in zip(image_shape, patch, strides, strict=True)
    ]


class _Predictor(nnUNetPredictor):
    """nnU-Net's predictor with the network's arithmetic precision chosen per call, and the
    patch fitted to small images when asked.

    The context wraps only the forward (inside nnU-Net's own autocast on CUDA, so it wins);
    the output is taken back to float32 so the Gaussian weighting and the accumulation of
    patches run exactly as in the float32 path.
    """

    precision = REFERENCE_PRECISION
    fit_patch = False

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        planned: ConfigurationManager = self.configuration_manager  # type: ignore[has-type]
        strides = network_strides(planned) if self.fit_patch else None
        patch = list(planned.patch_size)
        if strides is not None:
            patch = fitted_patch(input_image.shape[1:], patch, strides)
        if patch == list(planned.patch_size):  # the reference path, untouched
            return super().predict_sliding_window_return_logits(input_image)
        # nnU-Net reads the patch (padding, window steps, Gaussian) from the configuration.
        self.configuration_manager = ConfigurationManager(
            {**planned.configuration, "patch_size": patch}
        )
        try:
            return super().predict_sliding_window_return_logits(input_image)
        finally:
            self.configuration_manager = planned

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == REFERENCE_PRECISION:
            return super()._internal_maybe_mirror_and_predict(x)
        with precision_context(self.precision, self.device):
            out = super()._internal_maybe_mirror_and_predict(x)
        return out.float()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: missing") from e
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable JSON ({one_line(e, with_type=True)})") from e


def _load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for damaged files; all mean the same here
        raise WeightsError(
            f"{path}: corrupt or truncated checkpoint ({one_line(e, with_type=True)})"
        ) from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise WeightsError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return checkpoint


class NnUNetModel:
    """A ready nnU-Net predictor for one Dataset folder; build it with `NnUNetModel.load`."""

    def __init__(
        self,
        predictor: _Predictor,
        checkpoint_path: Path,
        configuration: str,
        num_input_channels: int,
    ):
        self._predictor = predictor
        self._checkpoint_path = checkpoint_path
        self._configuration = configuration
        self._num_input_channels = num_input_channels

    @classmethod
    def load(
        cls,
        dataset_dir: Path,
        device: torch.device,
        *,
        threads: int | None = None,
        checkpoints: Sequence[Path] = (),
    ) -> NnUNetModel:
        """Load `<dataset_dir>/<Trainer>__<Plans>__<Config>/fold_0` the way TotalSpineSeg does.

        Gaussian-weighted sliding window, no test-time mirroring (the tile step is chosen per
        `predict` call). Sets torch's (process-wide)
        thread count: `threads` or all usable cores on CPU, 1 on CUDA like TotalSpineSeg.
        `checkpoints` (folds of one trainer folder) replaces the fold_0 look-up: several are
        ensembled as nnU-Net does, their logits averaged before the softmax/sigmoid.
        Raises WeightsError (one line) for missing, corrupt or inconsistent model files.
        """
        paths = list(checkpoints) or [find_checkpoint(Path(dataset_dir))]
        checkpoint_path = paths[0]
        trainer_dir = checkpoint_path.parent.parent
        plans = _read_json(trainer_dir / "plans.json")
        dataset_json = _read_json(trainer_dir / "dataset.json")
        checkpoint = _load_checkpoint(checkpoint_path)
        folds = [checkpoint, *(_load_checkpoint(p) for p in paths[1:])]
        trainer_name, _plans_name, folder_config = trainer_dir.name.split("__", 2)
        trainer_name = checkpoint.get("trainer_name") or trainer_name
        configuration = (checkpoint.get("init_args") or {}).get("configuration") or folder_config
        try:
            plans_manager = PlansManager(plans)
            config_manager = plans_manager.get_configuration(configuration)
            label_manager = plans_manager.get_label_manager(dataset_json)
            num_inputs = determine_num_input_channels(plans_manager, config_manager, dataset_json)
            network = get_network_from_plans(
                config_manager.network_arch_class_name,
                config_manager.network_arch_init_kwargs,
                config_manager.network_arch_init_kwargs_req_import,
                num_inputs,
                label_manager.num_segmentation_heads,
                allow_init=False,
                deep_supervision=False,
            )
        except Exception as e:  # malformed plans/dataset JSON surface as any exception type
            raise WeightsError(
                f"{trainer_dir}: plans.json/dataset.json do not describe a network "
                f"({one_line(e, with_type=True)})"
            ) from e
        if max(label_manager.all_labels) > 255:
            raise WeightsError(f"{trainer_dir}/dataset.json: labels above 255 do not fit uint8")
        for path, fold in zip(paths, folds, strict=True):
            try:
                network.load_state_dict(fold["network_weights"])
            except (RuntimeError, TypeError, AttributeError) as e:
                raise WeightsError(
                    f"{path}: weights do not fit the network in plans.json "
                    f"({one_line(e, with_type=True)})"
                ) from e

        if device.type == "cuda":
            torch.set_num_threads(threads or 1)
            with contextlib.suppress(RuntimeError):  # only settable before any parallel work
                torch.set_num_interop_threads(1)
        else:
            torch.set_num_threads(threads or default_threads())
        # nnU-Net prints a notice about perform_everything_on_device on every CPU construction.
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = _Predictor(
                tile_step_size=REFERENCE_TILE_STEP,
                use_gaussian=True,
                use_mirroring=False,
                perform_everything_on_device=device.type == "cuda",
                device=device,
                verbose=False,
                allow_tqdm=False,
            )
        predictor.manual_initialization(
            network,
            plans_manager,
            config_manager,
            [fold["network_weights"] for fold in folds],
            dataset_json,
            trainer_name,
            checkpoint.get("inference_allowed_mirroring_axes"),
        )
        return cls(predictor, checkpoint_path, configuration, num_inputs)

    @property
    def checkpoint_path(self) -> Path:
        return self._checkpoint_path

    @property
    def trainer_name(self) -> str:
        """Trainer named in the checkpoint (never imported; see the module docstring)."""
        return self._predictor.trainer_name

    @property
    def configuration(self) -> str:
        return self._configuration

    @property
    def device(self) -> torch.device:
        return self._predictor.device

    @property
    def num_input_channels(self) -> int:
        return self._num_input_channels

    @property
    def num_outputs(self) -> int:
        """Output heads: regions (sigmoid) for region-based models, else classes (softmax)."""
        return self._predictor.label_manager.num_segmentation_heads

    @property
    def is_region_based(self) -> bool:
        return self._predictor.label_manager.has_regions

    @property
    def regions_class_order(self) -> tuple[int, ...] | None:
        """Label written for each region head; later heads overwrite earlier ones."""
        order = self._predictor.label_manager.regions_class_order
        return None if order is None else tuple(int(c) for c in order)

    def predict(
        self,
        channels: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        return_probabilities: bool = False,
        tile_step: float = REFERENCE_TILE_STEP,
        precision: str = REFERENCE_PRECISION,
        fit_patch: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment one image, exactly as nnU-Net would from a NIfTI holding this array.

        `channels`: (c, x, y, z), nibabel axis order (`get_fdata()` of each channel image), any real
        dtype (cast to float32 as nnU-Net's reader does); `spacing` is the voxel size along x, y, z
        in mm. Returns `(segmentation, probabilities)` on the input grid, nibabel axis order: labels
        (x, y, z) uint8, and when asked, per-head probabilities (num_outputs, x, y, z) float32
        (sigmoid per region, 0 outside nnU-Net's nonzero crop box; a transposed view of nnU-Net's
        array, not C-contiguous), else None. `tile_step` is the sliding-window step as a fraction of
        the patch: 0.5 is TotalSpineSeg's; up to 1.0 (no overlap) needs fewer patches, hence less
        time, but gives a different result. `precision` is the network's arithmetic: `auto` is
        TotalSpineSeg's (float32 on CPU, nnU-Net's float16 autocast on CUDA), `fp32` or `bf16`
        (autocast to bfloat16: about 2.4x faster on CPUs with a bfloat16 unit, a slightly different
        result; see `bf16_native`). `fit_patch`: shrink the patch along the axes where the image is
        smaller than it (`fitted_patch`), so the padding nnU-Net would add is not computed; a
        different result (the network's normalisation sees less padding). None (the default) = only
        with a tile step other than the reference's: the reference's sliding window stays nnU-Net's,
        any other is the fast one.
        """
        array = np.asarray(channels)
        if array.ndim != 4 or array.shape[0] != self._num_input_channels:
            raise ValueError(
                f"expected ({self._num_input_channels}, x, y, z) channels, got shape {array.shape}"
            )
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be three positive numbers, got {tuple(spacing)}")
        if not 0 < tile_step <= 1:  # nnU-Net's own limit (it asserts); above 1 leaves gaps
            raise ValueError(f"tile step must be in (0, 1], got {tile_step}")
        precision_context(precision, self.device)  # refuses an unknown name before any work
        self._predictor.tile_step_size = float(tile_step)
        self._predictor.precision = precision
        self._predictor.fit_patch = (
            tile_step != REFERENCE_TILE_STEP if fit_patch is None else bool(fit_patch)
        )
        # SimpleITK (nnU-Net's reader for .nii.gz) returns the same voxels with axes reversed,
        # and the spacing reversed with them; nnU-Net uses nothing else of the properties.
        # C order matters too: the z-score sums run in memory order, so a transposed view
        # would shift the normalised values by rounding and the probabilities with them.
        sitk_order = np.ascontiguousarray(array.transpose(0, 3, 2, 1), dtype=np.float32)
        properties = {"spacing": [abs(float(s)) for s in reversed(spacing)]}
        result = self._predictor.predict_single_npy_array(
            sitk_order, properties, None, None, return_probabilities
        )
        segmentation, probabilities = result if return_probabilities else (result, None)
        segmentation = np.ascontiguousarray(np.asarray(segmentation).transpose(2, 1, 0), np.uint8)
        if probabilities is not None:
            # A transposed view, not a copy of every head (1.1 CPU s on a whole-spine image):
            # callers read one or two heads, element by element.
            probabilities = (
                np.asarray(probabilities).astype(np.float32, copy=False).transpose(0, 3, 2, 1)
            )
        return segmentation, probabilities
