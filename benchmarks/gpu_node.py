"""A GPU node fed by SpineSeg's CPU stages, proven without a GPU (issue 30, item 5).

    python -m benchmarks.gpu_node [--images 4] [--delay-ms auto] [--cpu-workers 1]
                                  [--check-threads] [--work DIR]

No GPU is lent here, so the network is replaced by a stub and everything else is real:
whole-spine phantoms at the official 1 mm grid go through `spineseg participant` (reading,
checks, resampling, nnU-Net's own preprocessing, sliding window and export at the official
ResEnc-L patch size, labeling, back to the input grid, writing, QC) with one network worker
whose "GPU" is a stub. Per patch the stub waits the H100 time of a ResEnc-L patch (derived
below from FLOPs and memory traffic, not measured) while holding a lock, as one GPU would,
and returns zero logits of the right shape, so nnU-Net's bookkeeping runs on real arrays.
The labels it hands back are the phantom's own step-1/step-2 targets (what a perfect network
would output), so labeling, outputs and QC do their real work.

The vertebral-body and QC stages run in `--cpu-workers` spawned worker processes, as on a GPU
node by default (1 = the GPU default at one image in flight; 0 = in the image's thread).

Measured (one image in flight, every library on one thread, so CPU time is attributable):
- CPU core-seconds per image per stage and the GIL-held share, from two py-spy samplers
  attached to the run and its worker processes (`--subprocesses --nonblocking`, 100 Hz): one
  counts active samples per stage and process, the other (`--gil`) only samples holding
  their process's GIL. A stage's seconds = its share of the active samples x the CPU time of
  the run and its workers (getrusage of the process and its ended children), since on a
  shared machine a running thread is sampled while it waits for a core too. The serial part
  is the GIL of the *main* process (each worker has its own): its share = the main
  process's GIL samples / all active samples. The stub's own lookups of the truth are taken
  out;
- images/hour on this machine, and on a 16-core node by Amdahl's law from the main
  process's GIL share (the serial part: speed-up on n cores = 1 / (g + (1 - g) / n)),
  capped by the stub GPU's own rate;
- `--check-threads`: the same images once more with `--cpu-workers 0` (not sampled), and
  whether every output is the same (bytes of NIfTI/TSV/JSON/HTML with clock times blanked,
  pixels of PNGs).
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
        "handing arrays to workers (pickling)",
        [
            r"_feed \(multiprocessing/queues",
            r"get \(multiprocessing/queues",
            r"multiprocessing/reduction",
            r"recv \(multiprocessing/connection",
        ],
    ),
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
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # children: the stage workers
    usage0 = [resource.getrusage(w) for w in who]
    t0 = time.perf_counter()
    argv = [spec["bids"], spec["out"], "participant", "--skip-bids-validation", "--weights"]
    argv += ["demo", "--device", "cpu", "--omp-nthreads", "1", *spec["extra"]]
    rc = main(argv, engine_factory=factory)  # the workers have ended when it returns
    wall = time.perf_counter() - t0
    usage1 = [resource.getrusage(w) for w in who]
    cpu = [
        (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)
        for a, b in zip(usage0, usage1, strict=True)
    ]
    result = {"rc": rc, "wall_s": wall, "cpu_s": sum(cpu), "gpu_busy_s": busy[0]}
    result |= {"cpu_s_main": cpu[0], "cpu_s_workers": cpu[1]}
    # (The children's ru_maxrss is not the workers': a spawned child counts the parent's
    # pages between its fork and its exec. Their RSS is sampled from /proc instead.)
    result["main_peak_rss_mb"] = usage1[0].ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- py-spy
def stage_of(stack: str) -> str:
    """The stage of one py-spy raw stack (frames outermost first): its outermost match."""
    frames = [f for f in stack.split(";") if not f.startswith("process ")]
    for stages in (STAGES, FALLBACK):
        for frame in frames:
            for name, patterns in stages:
                if any(re.search(p, frame) for p in patterns):
                    return name
    return "other (scheduling, stamps, Python)" if frames else "no Python frame"


def process_of(stack: str) -> str:
    """ "main" (the participant run) or "workers" (a process it started): with
    `--subprocesses` py-spy puts one `process PID:"command"` frame per generation first."""
    generations = sum(f.startswith("process ") for f in stack.split(";")[:3])
    return "workers" if generations > 1 else "main"


def read_raw(path: Path) -> dict[str, Counter]:
    """Samples per stage, for the main process and for its worker processes."""
    counts: dict[str, Counter] = {"main": Counter(), "workers": Counter()}
    if not path.is_file():
        return counts
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit() and "multiprocessing/resource_tracker" not in stack:
            counts[process_of(stack)][stage_of(stack)] += int(n)
    return counts


def same_outputs(a: Path, b: Path) -> tuple[list[str], int]:
    """Outputs that differ between two runs of the same images (clock times and timings
    blanked in the text files, PNGs compared by pixels); the logs and stamps are not."""
    from PIL import Image

    when = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00|<th>Timings</th><td>[^<]*")

    def files(root: Path) -> dict[str, object]:
        found: dict[str, object] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or rel.startswith("logs/"):
                continue
            if path.suffix == ".png":
                with Image.open(path) as im:
                    found[rel] = (im.mode, im.size, np.asarray(im).tobytes())
            else:
                found[rel] = when.sub(b"", path.read_bytes())
        return found

    fa, fb = files(a), files(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)), len(fa)


def start_child(spec: dict) -> subprocess.Popen:
    """Start the child run and wait until it is ready (models loaded, waiting for "go")."""
    for key in ("ready", "go", "result"):
        Path(spec[key]).unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gpu_node", "--child", json.dumps(spec)], cwd=ROOT
    )
    while not Path(spec["ready"]).exists():
        if proc.poll() is not None:
            raise SystemExit("child ended before the run started")
        time.sleep(0.1)
    return proc


def plain_run(spec: dict) -> dict:
    """Run the child without samplers (the comparison run)."""
    proc = start_child(spec)
    Path(spec["go"]).write_text("go")
    proc.wait()
    return json.loads(Path(spec["result"]).read_text())


def workers_rss_mb(pid: int) -> list[float]:
    """Resident MB of each stage worker process of `pid` now (its resource tracker left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            if b"resource_tracker" in (stat.parent / "cmdline").read_bytes():
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found.append(int(line.split()[1]) / 1024)
    return found


def sampled_run(spec: dict, work: Path) -> dict:
    """Run the child with two py-spy samplers attached: all active samples, and GIL-held."""
    proc = start_child(spec)
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
                "--subprocesses",
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
    worker_rss: list[float] = []  # MB of each stage worker process, every second
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        for _ in range(5):
            worker_rss += workers_rss_mb(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
    for s in samplers:
        s.wait(timeout=60)
    result = json.loads(Path(spec["result"]).read_text())
    result["loadavg"] = {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)}
    if worker_rss:  # the smallest: a worker between stages, its libraries loaded
        result["worker_rss_mb"] = {"min": min(worker_rss), "max": max(worker_rss)}
    result["samples"] = {
        kind: {who: dict(c) for who, c in read_raw(path).items()} for kind, path in raw.items()
    }
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
    ap.add_argument("--cpu-workers", type=int, default=1, help="stage worker processes")
    ap.add_argument("--check-threads", action="store_true", help="compare with 0 workers")
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
        "extra": ["--max-in-flight", "1", "--cpu-workers", str(args.cpu_workers)],
        "ready": str(run_dir / "ready"),
        "go": str(run_dir / "go"),
        "result": str(run_dir / "result.json"),
    }
    load0 = os.getloadavg()
    run = sampled_run(spec, run_dir)
    n = args.images
    by_process, gil_by_process = run["samples"]["active"], run["samples"]["gil"]
    active = Counter(by_process["main"]) + Counter(by_process["workers"])
    # The serial part by Amdahl's law is the main process's GIL: each worker has its own.
    gil = Counter(gil_by_process["main"])
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
    in_workers_s = {
        k: v * cpu_per_sample / n
        for k, v in by_process["workers"].items()
        if k not in once and not k.startswith("startup")
    }
    worker_gil_s = {
        k: v * cpu_per_sample / n
        for k, v in gil_by_process["workers"].items()
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
        "cpu_workers": args.cpu_workers,
        "core_s_per_image_in_workers_by_stage": in_workers_s,
        "gil_s_per_image_in_workers_by_stage (each worker's own GIL; not serial)": worker_gil_s,
        "core_s_per_image": core_s,
        "core_s_per_image_getrusage": run["cpu_s"] / n,
        "core_s_per_image_gpu_node": node_core_s,
        "gil_s_per_image (main process)": gil_all,
        "gil_share": gil_all / core_s,
        "gil_share_gpu_node": gil_node / node_core_s,
        "gpu_s_per_image": run["gpu_busy_s"] / n,
        "images_per_hour_here": 3600 * n / run["wall_s"],
        "images_per_hour_16_cores_amdahl": node(core_s, gil_all),
        "images_per_hour_16_cores_amdahl_gpu_accumulation": node(node_core_s, gil_node),
        # Derived alternatives: four runs side by side on the node (e.g. four SLURM array
        # tasks per GPU, each with --nprocs 4), and the ceiling with no GIL limit at all.
        "images_per_hour_16_cores_4_runs_gpu_accumulation": node(node_core_s, gil_node, runs=4),
        "images_per_hour_16_cores_no_gil_gpu_accumulation": min(16 * 3600 / node_core_s, gpu_cap),
        "targets": {"core_s_per_image": 15, "gil_share": 0.05, "images_per_hour": 3000},
        "standins": facts["step1"]["architecture"],
    }
    if args.check_threads:  # the same images with the stages in the image's thread
        threads = {**spec, "out": str(run_dir / "out-threads")}
        threads["extra"] = ["--max-in-flight", "1", "--cpu-workers", "0"]
        plain = plain_run(threads)
        differ, compared = same_outputs(run_dir / "out", run_dir / "out-threads")
        report["outputs_vs_threads"] = {
            "compared_files": compared,
            "differ": differ,
            "how": "bytes of every NIfTI/TSV/JSON/HTML output (clock times and timings "
            "blanked), pixels of every PNG; logs and stamps not compared",
            "threads_run": plain,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_node.json").write_text(json.dumps(report, indent=2))
    shown = list(report)[list(report).index("core_s_per_image_by_stage") :]
    print(json.dumps({k: report[k] for k in shown}, indent=2, default=str))


if __name__ == "__main__":
    main()
