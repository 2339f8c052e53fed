"""A GPU node fed by SpineSeg's CPU stages, proven without a GPU (issue 30, item 5).

    python -m benchmarks.gpu_node [--images 4] [--delay-ms auto] [--work DIR]

No GPU is lent here, so the network is replaced by a stub and everything else is real:
whole-spine phantoms at the official 1 mm grid go through `spineseg participant` (reading,
checks, resampling, nnU-Net's own preprocessing, sliding window and export at the official
ResEnc-L patch size, labeling, back to the input grid, writing, QC) with one network worker
whose "GPU" is a stub. Per patch the stub waits the H100 time of a ResEnc-L patch (derived
below from FLOPs and memory traffic, not measured) while holding a lock, as one GPU would,
and returns zero logits of the right shape, so nnU-Net's bookkeeping runs on real arrays.
The labels it hands back are the phantom's own step-1/step-2 targets (what a perfect network
would output), so labeling, outputs and QC do their real work.

Measured (one image in flight, every library on one thread, so CPU time is attributable):
- CPU core-seconds per image per stage and the GIL-held share, from two py-spy samplers
  attached to the run (`--nonblocking`, 100 Hz): one counts active samples per stage, the
  other (`--gil`) only samples holding the GIL. A stage's seconds = its share of the active
  samples x the run's CPU time (getrusage), since on a shared machine a running thread is
  sampled while it waits for a core too; the GIL share = GIL samples / active samples. The
  stub's own lookups of the truth are taken out;
- images/hour on this machine, and on a 16-core node by Amdahl's law from the GIL share
  (the GIL is the serial part: speed-up on n cores = 1 / (g + (1 - g) / n)), capped by the
  stub GPU's own rate.
On a real GPU node nnU-Net accumulates the patches on the GPU (perform_everything_on_device);
here the accumulation runs on the CPU, so the "sliding window" stage is an upper bound and the
derived node figure is given both with and without it.

Writes benchmarks/out/gpu_node.json. Not a test. The GPU run itself was not possible: no GPU
was lent to this session.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.realsize import DATASETS, machine

ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 100
# H100 SXM5: dense float16/bfloat16 tensor-core peak and HBM3 bandwidth (NVIDIA data sheet).
H100_FLOPS, H100_BYTES_S = 989e12, 3.35e12
# Assumed sustained shares of those peaks for 3-D convolutions under autocast (cuDNN rarely
# exceeds half the tensor peak on 3-D convs; elementwise passes reach ~70 % of bandwidth).
CONV_EFFICIENCY, MEMORY_EFFICIENCY = 0.4, 0.7
# Stages by the outermost frame of a sample that matches one of their patterns (the engine's
# own stage functions and the participant run's stage modules, then the libraries).
STAGES = (
    ("startup: model load", [r"StubNetworks\.__init__", r"NnUNetModel\.load"]),
    ("startup: imports", [r"_find_and_load", r"exec_module"]),
    ("startup: selection", [r"discover \(", r"bids/layout/"]),
    ("truth lookup (stub only)", [r"TruthTable\.outputs", r"_key \("]),
    ("vertebral bodies", [r"stages/vertebrae", r"bids_app/vertebrae/"]),
    ("QC", [r"bids_app/qc/", r"stages/image_qc"]),
    (
        "writing",
        [
            r"bids_app/bids/derivatives",
            r"stages/write",
            r"plumbing/atomic",
            r"corrections/kept",
        ],
    ),
    ("reading", [r"load_image", r"image_checks", r"check_image"]),
    ("resampling", [r"_prepare \(", r"resample_to_iso"]),
    ("back to native", [r"_to_native"]),
    ("labeling", [r"bids_app/labeling/"]),
    ("preprocessing (nnU-Net)", [r"PreprocessAdapterFromNpy", r"nnunetv2/preprocessing/"]),
    ("sliding window", [r"predict_logits_from_preprocessed_data", r"sliding_window"]),
    ("export (nnU-Net)", [r"convert_predicted_logits", r"export_prediction"]),
)
# Matched only where no stage above matched anywhere in the stack: SpineSeg's own array
# copies around nnU-Net's calls (the wrapper's frame is outside preprocessing and export).
FALLBACK = (("nnU-Net wrapper (array copies)", [r"NnUNetModel\.predict \("]),)


# --------------------------------------------------------------------------- GPU time
def patch_cost(weights: Path) -> dict:
    """FLOPs and activation traffic of one step-1 patch forward (meta tensors, no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bids_app.nnunet.model import NnUNetModel

    model = NnUNetModel.load(weights / DATASETS["step1"], torch.device("cpu"), threads=1)
    net = model._predictor.network.to("meta").eval()
    patch = model._predictor.configuration_manager.patch_size
    traffic = [0]

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            traffic[0] += 2 * output.numel() * 2  # written once, read once, 2 bytes (fp16)

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    x = torch.empty(1, model.num_input_channels, *patch, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        net(x)
    for h in hooks:
        h.remove()
    total = flops.get_total_flops()
    compute_s = total / (CONV_EFFICIENCY * H100_FLOPS)
    memory_s = traffic[0] / (MEMORY_EFFICIENCY * H100_BYTES_S)
    return {
        "patch_nnunet_order": list(patch),
        "flops": total,
        "activation_bytes": traffic[0],
        "compute_bound_s": compute_s,
        "memory_bound_s": memory_s,
        "derived_patch_s": max(compute_s, memory_s),
        "assumptions": f"H100 SXM5 {H100_FLOPS / 1e12:.0f} TFLOP/s dense fp16 at "
        f"{CONV_EFFICIENCY:.0%}, {H100_BYTES_S / 1e12:.2f} TB/s at {MEMORY_EFFICIENCY:.0%}; "
        "the larger of the two; derived, not measured",
    }


# --------------------------------------------------------------------------- the stub
def _key(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array[::3, ::3, ::3]).tobytes()).hexdigest()


class TruthTable:
    """Perfect network outputs of each phantom, found from the network's input channels."""

    def __init__(self, pairs: list[tuple[Path, Path]]):
        from bids_app import labeling
        from bids_app.engine import geometry as geo

        self.step1: dict[str, np.ndarray] = {}
        self.step2: dict[str, np.ndarray] = {}
        for image_path, truth_path in pairs:
            image, truth = nib.load(image_path), nib.load(truth_path)
            iso = geo.resample_to_iso(geo.to_canonical(image))
            data = np.asanyarray(iso.dataobj)
            truth_iso = geo.labels_onto(np.asarray(truth.dataobj), truth.affine, iso)
            self.step1[_key(data)] = truth_iso
            box = labeling.bbox_slices(truth_iso > 0, 10)
            self.step2[_key(data[box].astype(np.float32))] = truth_iso[box]

    def outputs(self, step: str, channels: np.ndarray, with_probs: bool):
        from bids_app.engine.pipeline import CANAL_HEAD, CORD_HEAD
        from bids_app.phantom.targets import step1_target, step2_target
        from bids_app.plumbing.labels import STEP1_REGIONS

        table = self.step1 if step == "step1" else self.step2
        truth = table[_key(channels[0])]
        if step == "step1":
            labels = step1_target(truth)
            probs = None
            if with_probs:
                probs = np.zeros((len(STEP1_REGIONS), *labels.shape), np.float32)
                probs[CANAL_HEAD] = np.isin(labels, (8, 9)) * 0.9
                probs[CORD_HEAD] = (labels == 9) * 0.8
            return labels, probs
        for start in (0, 1):
            labels, channel = step2_target(truth, start)
            if np.array_equal(channel, channels[1].astype(np.uint8)):
                return labels, None
        raise LookupError("step 2 input channel matches neither disc parity of the truth")


class DelayNet:
    """The GPU: waits the derived time per patch (one at a time) and returns zero logits."""

    def __init__(self, heads: int, seconds: float, gpu: threading.Lock, busy: list[float]):
        self.heads, self.seconds, self.gpu, self.busy = heads, seconds, gpu, busy

    def __call__(self, x):
        import torch

        with self.gpu:
            time.sleep(self.seconds)
            self.busy[0] += self.seconds
        return torch.zeros((x.shape[0], self.heads, *x.shape[2:]), dtype=x.dtype)

    def to(self, *_a, **_k) -> DelayNet:
        return self

    def eval(self) -> DelayNet:
        return self

    def load_state_dict(self, *_a, **_k) -> None:
        pass


class StubNetworks:
    """A `Networks` whose models are the official-size nnU-Net predictors around DelayNet."""

    def __init__(self, standins: Path, truth: TruthTable, seconds: float, busy: list[float]):
        import torch

        from bids_app.nnunet.model import NnUNetModel

        self.truth, self.device = truth, "stub-gpu"
        gpu = threading.Lock()
        self.models = {}
        for step, name in DATASETS.items():
            model = NnUNetModel.load(standins / name, torch.device("cpu"), threads=1)
            model._predictor.network = DelayNet(model.num_outputs, seconds, gpu, busy)
            model._predictor.list_of_parameters = [{}]
            self.models[step] = model

    def predict(self, step, channels, return_probabilities=False, tile_step=0.5, precision="auto"):
        from bids_app.engine.networks import Prediction

        t0 = time.perf_counter()
        self.models[step].predict(channels, return_probabilities=return_probabilities)
        labels, probs = self.truth.outputs(step, channels, return_probabilities)
        return Prediction(labels, probs, self.device, time.perf_counter() - t0)


def child(spec: dict) -> None:
    """The participant run with the stub network, in this process (py-spy attaches here)."""
    from bids_app.cli.main import main
    from bids_app.engine.networks import PooledNetworks
    from bids_app.engine.pipeline import SpineSegEngine
    from bids_app.run.scheduling import DevicePool

    pairs = [(Path(a), Path(b)) for a, b in spec["pairs"]]
    truth = TruthTable(pairs)
    busy = [0.0]

    def factory(weights, _devices, threads):
        pool = DevicePool(
            ["stub-gpu"],
            lambda _d: StubNetworks(Path(spec["standins"]), truth, spec["patch_s"], busy),
        )
        return SpineSegEngine(weights, threads=threads, predictor=PooledNetworks(pool))

    Path(spec["ready"]).write_text("go")  # the samplers attach now; setup is not measured
    while not Path(spec["go"]).exists():
        time.sleep(0.05)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    argv = [spec["bids"], spec["out"], "participant", "--skip-bids-validation", "--weights"]
    argv += ["demo", "--device", "cpu", "--omp-nthreads", "1", *spec["extra"]]
    rc = main(argv, engine_factory=factory)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    result = {"rc": rc, "wall_s": wall, "cpu_s": cpu, "gpu_busy_s": busy[0]}
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- py-spy
def stage_of(stack: str) -> str:
    """The stage of one py-spy raw stack (frames outermost first): its outermost match."""
    frames = stack.split(";")
    for stages in (STAGES, FALLBACK):
        for frame in frames:
            for name, patterns in stages:
                if any(re.search(p, frame) for p in patterns):
                    return name
    return "other (scheduling, stamps, Python)" if stack else "no Python frame"


def read_raw(path: Path) -> Counter:
    counts: Counter = Counter()
    if not path.is_file():
        return counts
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    return counts


def sampled_run(spec: dict, work: Path) -> dict:
    """Run the child with two py-spy samplers attached: all active samples, and GIL-held."""
    for key in ("ready", "go", "result"):
        Path(spec[key]).unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gpu_node", "--child", json.dumps(spec)], cwd=ROOT
    )
    while not Path(spec["ready"]).exists():
        if proc.poll() is not None:
            raise SystemExit("child ended before the run started")
        time.sleep(0.1)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = {"active": work / "active.txt", "gil": work / "gil.txt"}
    samplers = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--nonblocking",
                "-r",
                str(RATE_HZ),
                "-f",
                "raw",
                "-o",
                str(path),
                *(["--gil"] if kind == "gil" else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind, path in raw.items()
    ]
    time.sleep(2)  # let both samplers attach
    Path(spec["go"]).write_text("go")
    loads = []  # the machine's 1-minute load average every 5 s while the run goes
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for s in samplers:
        s.wait(timeout=60)
    result = json.loads(Path(spec["result"]).read_text())
    result["loadavg"] = {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)}
    result["samples"] = {kind: dict(read_raw(path)) for kind, path in raw.items()}
    return result


def make_dataset(root: Path, n: int) -> list[tuple[Path, Path]]:
    from bids_app.phantom.render import render_phantom

    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "GPU-node phantoms", "BIDSVersion": "1.10.1", "DatasetType": "raw"})
    )
    pairs = []
    for i in range(n):
        ph = render_phantom(7000 + i)  # whole spine, 1 mm, T2w
        path = root / f"sub-g{i:02d}" / "anat" / f"sub-g{i:02d}_T2w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(ph.image, path)
        truth = root.parent / f"truth-g{i:02d}.nii.gz"
        nib.save(ph.labels, truth)
        pairs.append((path, truth))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--delay-ms", default="auto", help="per-patch GPU time; auto = derived")
    ap.add_argument("--work", type=Path, help="work folder; stand-in weights reused from here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from benchmarks.fast import standin_weights

    work = args.work or Path(tempfile.mkdtemp(prefix="spineseg-gpunode-"))
    work.mkdir(parents=True, exist_ok=True)
    standins, facts = standin_weights(work)
    cost = patch_cost(standins)
    patch_s = cost["derived_patch_s"] if args.delay_ms == "auto" else float(args.delay_ms) / 1e3
    print(f"per-patch GPU time {patch_s * 1e3:.1f} ms ({cost['assumptions']})", flush=True)
    run_dir = work / f"run-{time.strftime('%H%M%S')}"
    pairs = make_dataset(run_dir / "bids", args.images)
    spec = {
        "bids": str(run_dir / "bids"),
        "out": str(run_dir / "out"),
        "pairs": [[str(a), str(b)] for a, b in pairs],
        "standins": str(standins),
        "patch_s": patch_s,
        "extra": ["--max-in-flight", "1"],
        "ready": str(run_dir / "ready"),
        "go": str(run_dir / "go"),
        "result": str(run_dir / "result.json"),
    }
    load0 = os.getloadavg()
    run = sampled_run(spec, run_dir)
    n = args.images
    active, gil = run["samples"]["active"], run["samples"]["gil"]
    # py-spy counts a running thread whether or not the (shared) CPU is serving it, so samples
    # give each stage's share; the process's CPU time (getrusage) gives the seconds.
    # Not per image: the stub's truth lookups, and the run's one-off startup.
    once = ("truth lookup (stub only)", "no Python frame")
    total = sum(active.values())
    cpu_per_sample = run["cpu_s"] / total if total else 0.0
    startup_s = {k: v * cpu_per_sample for k, v in active.items() if k.startswith("startup")}
    stage_s = {
        k: v * cpu_per_sample / n
        for k, v in active.items()
        if k not in once and not k.startswith("startup")
    }
    gil_s = {
        k: v * cpu_per_sample / n
        for k, v in gil.items()
        if k not in once and not k.startswith("startup")
    }
    core_s = sum(stage_s.values())
    gpu_resident = stage_s.get("sliding window", 0.0)
    gil_all = sum(gil_s.values())
    gil_node = gil_all - gil_s.get("sliding window", 0.0)
    gpu_cap = 3600 * n / max(run["gpu_busy_s"], 1e-9)

    def node(core_seconds: float, gil_seconds: float, runs: int = 1, cores: int = 16) -> float:
        """Images/hour of `runs` participant runs side by side on `cores` (cores/runs each),
        threads in each limited by the GIL (Amdahl: the GIL-held part is serial), capped by
        the stub GPU's own rate."""
        g = gil_seconds / core_seconds
        speedup = 1 / (g + (1 - g) / (cores / runs))
        return min(runs * 3600 / core_seconds * speedup, gpu_cap)

    node_core_s = core_s - gpu_resident
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "loadavg": [load0[0], os.getloadavg()[0]],
        "loadavg_during_run": run.pop("loadavg"),
        "gpu_run": "not possible: no GPU was lent to this session; the network is a stub",
        "images": n,
        "image": "whole-spine phantom, 1 mm, T2w (seeds 7000+)",
        "patch_cost": cost,
        "patch_s_used": patch_s,
        "run": {k: v for k, v in run.items() if k != "samples"},
        "samples": run["samples"],
        "core_s_per_image_by_stage": stage_s,
        "core_s_startup_once": startup_s,
        "gil_s_per_image_by_stage": gil_s,
        "core_s_per_image": core_s,
        "core_s_per_image_getrusage": run["cpu_s"] / n,
        "core_s_per_image_gpu_node": node_core_s,
        "gil_s_per_image": gil_all,
        "gil_share": gil_all / core_s,
        "gil_share_gpu_node": gil_node / node_core_s,
        "gpu_s_per_image": run["gpu_busy_s"] / n,
        "images_per_hour_here": 3600 * n / run["wall_s"],
        "images_per_hour_16_cores_amdahl": node(core_s, gil_all),
        "images_per_hour_16_cores_amdahl_gpu_accumulation": node(node_core_s, gil_node),
        # Derived alternatives to one run's threads: four runs side by side on the node
        # (e.g. four SLURM array tasks per GPU, each with --nprocs 4), and the ceiling with
        # no GIL limit at all (every CPU stage in worker processes; not implemented).
        "images_per_hour_16_cores_4_runs_gpu_accumulation": node(node_core_s, gil_node, runs=4),
        "images_per_hour_16_cores_no_gil_gpu_accumulation": min(16 * 3600 / node_core_s, gpu_cap),
        "targets": {"core_s_per_image": 15, "gil_share": 0.05, "images_per_hour": 3000},
        "standins": facts["step1"]["architecture"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_node.json").write_text(json.dumps(report, indent=2))
    shown = list(report)[list(report).index("core_s_per_image_by_stage") :]
    print(json.dumps({k: report[k] for k in shown}, indent=2, default=str))


if __name__ == "__main__":
    main()
