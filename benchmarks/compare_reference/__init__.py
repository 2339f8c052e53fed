"""Side-by-side run of SpineSeg and the reference tool (PyPI totalspineseg==20260807).

For each case (a phantom rendered by `bids_app.phantom`, a real scan of shared/data, or any
NIfTI file) the same image and the same weights folder go through:

- `ref`: the reference CLI as users run it (with `--no-stalling`; without it, it deadlocks here);
- `ref-preload`: the same CLI through a wrapper that preloads torch and nnU-Net into its
  forkserver (`multiprocessing.set_forkserver_preload`), the strongest form of the same code;
- `spineseg`: the `spineseg segment` CLI.

Each run is timed (wall) and its whole process tree is polled from /proc (sum of RSS and of
PSS over all live descendants, peak of each, and the most processes alive at once). Outputs are
then compared voxel by voxel against the reference: final labels (`step2_output`), step-1
labels (`step1_output`), level markers (`step1_levels`) and the cord/canal soft maps.
A batch mode segments N phantoms in one call per tool (SpineSeg: its engine in one process).

The reference never runs inside this process: it lives in its own venv (see
benchmarks/reference_env.sh), gets its own HOME and TMPDIR, and is judged by its output files
and its `Error:` lines, not by its exit code (it exits 0 when an image fails).

Run it from the repository root: `python -m benchmarks.compare_reference [CASES] [options]`
(`--help` lists them). Results: benchmarks/out/compare_reference.json and .md.

Modules, in the order a run uses them: `cli` (command line, main), `cases` (case specs to input
files), `run_ref` / `run_ours` (the reference tool / SpineSeg), `measure` (timed, memory-polled
process trees and the verdict on a run), `metrics` (voxel comparisons), `driver` (one case or
batch through every tool), `report` (the Markdown tables); `config` holds what they share.
"""
