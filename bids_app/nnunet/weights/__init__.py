"""Install, locate and verify the TotalSpineSeg nnU-Net weights (docs/method.md §5).

Knows the official release URLs and folder layout, nothing about labels or networks. One
module per job:

- `releases`: the release table, the default folder and the demo models' known hashes;
- `folders`: the layout of a weights folder, `WeightsError` and `WeightSet`;
- `manifest`: verifying (zip CRCs, SHA-256 manifests, first-use records, provenance);
- `install`: download, unpack, install atomically, pack release zips;
- `resolve`: which weights a run uses, verified before any is loaded.

The names below are the public ones; callers import them from here.
"""

from bids_app.nnunet.weights.folders import WeightsError, WeightSet, find_checkpoint, model_files
from bids_app.nnunet.weights.install import install_weights, pack_release
from bids_app.nnunet.weights.manifest import (
    check_checkpoint,
    file_records_ok,
    read_manifest,
    sha256_file,
)
from bids_app.nnunet.weights.releases import (
    DEFAULT_RELEASE,
    DEMO_DIR,
    DEMO_RELEASE,
    ENV_VAR,
    MANIFEST,
    RELEASES,
    STEP1,
    STEP2,
    UNKNOWN_RELEASE,
    default_weights_dir,
    describe_release,
)
from bids_app.nnunet.weights.resolve import resolve_weights

__all__ = [
    "DEFAULT_RELEASE",
    "DEMO_DIR",
    "DEMO_RELEASE",
    "ENV_VAR",
    "MANIFEST",
    "RELEASES",
    "STEP1",
    "STEP2",
    "UNKNOWN_RELEASE",
    "WeightSet",
    "WeightsError",
    "check_checkpoint",
    "default_weights_dir",
    "describe_release",
    "file_records_ok",
    "find_checkpoint",
    "install_weights",
    "model_files",
    "pack_release",
    "read_manifest",
    "resolve_weights",
    "sha256_file",
]
