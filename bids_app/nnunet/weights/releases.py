"""What is known about weights before any is read: the official release table (download
URLs, Dataset folder names), the environment variable and default folder, and the SHA-256 of
the shipped demo models (listed in their README).

The official release pages publish no SHA-256 of their zips, so none is pinned here: the
first download is trusted, its zips' hashes are recorded in the manifest at install, and
docs/installation.md says how to check them by hand.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

_URL = "https://github.com/neuropoly/totalspineseg/releases/download/{rel}/{name}_{rel}.zip"

STEP1 = "Dataset101_TotalSpineSeg_step1"

STEP2 = "Dataset102_TotalSpineSeg_step2"

DEFAULT_RELEASE = "r20260730"

RELEASES: dict[str, dict[str, str]] = {
    rel: {name: _URL.format(rel=rel, name=name) for name in (STEP1, STEP2)}
    for rel in ("r20260730", "r20251124")
}

# The two networks are told apart by dataset number only, as TotalSpineSeg does.
STEP_PREFIXES = {"step1": "Dataset101_", "step2": "Dataset102_"}

ENV_VAR = "SPINESEG_WEIGHTS"

MANIFEST = "manifest.json"

DEMO_RELEASE = "demo"

UNKNOWN_RELEASE = "unknown"

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_models"

DEMO_README = "README.md"

_DEMO_SHA_BLOCK = ("<!-- demo-sha:start -->", "<!-- demo-sha:end -->")  # train.py export

REINSTALL = "reinstall with `spineseg weights --force`"

ALTERNATIVES = (
    "offline, install the release zips with `spineseg weights --from DIR|ZIP`, "
    "run with `--weights DIR`, or try the demo models with `--weights demo`"
)


def describe_release(release: str) -> str:
    """How the CLI names a release, so that demo or unknown weights never pass as official."""
    if release == DEMO_RELEASE:
        return (
            "the demo models (release `demo`: synthetic phantoms only, "
            "not an official TotalSpineSeg release)"
        )
    if release == UNKNOWN_RELEASE:
        return (
            "weights of unknown origin (release `unknown`: not downloaded from an official "
            "TotalSpineSeg release URL, hashes not those of the demo models)"
        )
    return f"TotalSpineSeg release {release}"


def demo_entries() -> dict[str, dict]:
    """Known SHA-256 of the shipped demo models, as manifest entries (Dataset folder -> files).

    `python -m training.demo_models.train export` lists them in the demo README; empty when
    there is no list.
    """
    try:
        text = (DEMO_DIR / DEMO_README).read_text()
    except OSError:
        return {}
    start, end = _DEMO_SHA_BLOCK
    block = text.partition(start)[2].partition(end)[0]
    entries: dict[str, dict] = {}
    for digest, rel in re.findall(r"^([0-9a-f]{64})  (\S+)$", block, re.M):
        entries.setdefault(rel.split("/", 1)[0], {"files": {}})["files"][rel] = {"sha256": digest}
    return entries


def default_weights_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Per-user weights folder: `$XDG_DATA_HOME/spineseg/weights` or ~/.local/share/..."""
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "spineseg" / "weights"
