"""Which weights a run uses (--weights, $SPINESEG_WEIGHTS, the per-user folder, or the demo
models), verified against their manifest (or recorded at first use) before any is loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from bids_app.nnunet.weights import releases
from bids_app.nnunet.weights.folders import WeightsError, WeightSet, both_steps, dataset_dirs
from bids_app.nnunet.weights.manifest import (
    cached_manifest_path,
    flat_hashes,
    read_weights_manifest,
    record_first_use,
    release_of,
    verify,
)
from bids_app.nnunet.weights.releases import (
    ALTERNATIVES,
    DEMO_README,
    DEMO_RELEASE,
    ENV_VAR,
    MANIFEST,
    REINSTALL,
    default_weights_dir,
    demo_entries,
)

log = logging.getLogger(__name__)


def resolve_weights(
    cli_path: Path | str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    release: str | None = None,
    demo: bool = False,
) -> WeightSet:
    """Find and verify the weights to run with.

    Precedence: `cli_path` > $SPINESEG_WEIGHTS > `default_weights_dir()`. The demo models
    shipped in the package are used only when asked for: `demo=True`, the path "demo" or
    their folder; they are checked against the hashes in their README. Any other root may
    hold `<release>/Dataset10x_*` (an official release, or `release` when given) or the
    Dataset folders directly. Every call re-hashes the model files against the manifest; a
    folder without one gets one now (see the module docstring).
    """
    chosen = cli_path if cli_path is not None else env.get(ENV_VAR) or None
    if demo or str(chosen) == "demo" or (chosen and Path(chosen).resolve() == releases.DEMO_DIR):
        return _resolve_demo()
    root = Path(chosen) if chosen is not None else default_weights_dir(env)
    release_dir = _locate_release(root, release)
    datasets = both_steps(release_dir)
    own, cached = release_dir / MANIFEST, cached_manifest_path(release_dir, env)
    where = own if own.is_file() else cached
    manifest = read_weights_manifest(where)
    if manifest is None:
        manifest = record_first_use(release_dir, datasets, env)
        hashes = flat_hashes(manifest["datasets"])
    else:
        fix = (
            f"restore the file, or delete {where} to record the folder as it is now"
            if manifest.get("first_use")
            else REINSTALL
        )
        hashes = verify(release_dir, datasets, manifest["datasets"], where, fix)
    used = {ds.name: manifest["datasets"][ds.name] for ds in datasets.values()}
    return WeightSet(
        root, release_dir, release_of(used), datasets["step1"], datasets["step2"], hashes
    )


def _resolve_demo() -> WeightSet:
    """The shipped demo models, checked against the hashes in their README (no manifest)."""
    readme = releases.DEMO_DIR / DEMO_README
    entries = demo_entries()
    if not entries:
        raise WeightsError(f"{readme}: no SHA-256 list of the demo models; reinstall spineseg")
    datasets = both_steps(releases.DEMO_DIR)
    hashes = verify(releases.DEMO_DIR, datasets, entries, readme, "reinstall spineseg")
    return WeightSet(
        releases.DEMO_DIR,
        releases.DEMO_DIR,
        DEMO_RELEASE,
        datasets["step1"],
        datasets["step2"],
        hashes,
    )


def _locate_release(root: Path, release: str | None) -> Path:
    """Folder holding the Dataset folders of a weights root."""
    hint = f"install them with `spineseg weights` or, {ALTERNATIVES}"
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found; {hint}")
    if dataset_dirs(root):
        if release is not None and root.name != release:
            raise WeightsError(f"{root}: holds the model folders directly, not release {release}")
        return root
    installed = sorted(
        d.name for d in root.iterdir() if not d.name.startswith(".") and dataset_dirs(d)
    )
    if release is not None:
        if release not in installed:
            have = ", ".join(installed) or "none"
            raise WeightsError(f"{root}: release {release} not installed (installed: {have})")
        return root / release
    if not installed:
        raise WeightsError(f"{root}: no TotalSpineSeg weights inside; {hint}")
    official = [rel for rel in releases.RELEASES if rel in installed]  # newest first
    return root / (official[0] if official else installed[-1])
