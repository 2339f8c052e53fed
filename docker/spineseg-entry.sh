#!/bin/sh
# Installed in the image as /opt/spineseg/bin/spineseg, first on PATH, so the ENTRYPOINT
# (docker run, apptainer run) and every `spineseg ...` typed in a shell (apptainer exec,
# Boutiques, CBRAIN) pass through here.
#
# Why: the image has no usable HOME (any UID, read-only root, HOME=/nonexistent or a
# read-only bind), yet matplotlib, torch/inductor and friends write caches on import and die
# or slow down when they cannot. Each cache variable the caller did not set is pointed at a
# private folder under $TMPDIR (the scheduler's scratch, else /tmp). Nothing else is changed,
# and `exec` keeps the app as PID 1's direct replacement so signals reach it.
set -eu

tmp_root="${TMPDIR:-/tmp}"
cache="${SPINESEG_CACHE_DIR:-$tmp_root/spineseg-cache-$(id -u)}"
umask 077
# A folder left by another user (shared /tmp) or not writable: take a fresh one instead.
if ! mkdir -p "$cache" 2>/dev/null || [ ! -O "$cache" ] || [ ! -w "$cache" ]; then
    cache="$(mktemp -d "$tmp_root/spineseg-cache-XXXXXX")" || {
        echo "spineseg: no writable temp folder at $tmp_root; bind one to /tmp or set TMPDIR" >&2
        exit 73
    }
fi
umask 022

: "${MPLCONFIGDIR:=$cache/matplotlib}"
: "${XDG_CACHE_HOME:=$cache/xdg}"
: "${TORCH_HOME:=$cache/torch}"
: "${TORCHINDUCTOR_CACHE_DIR:=$cache/inductor}"
: "${TRITON_CACHE_DIR:=$cache/triton}"
: "${NUMBA_CACHE_DIR:=$cache/numba}"
# nnU-Net reads these at import; inference loads models from the weights folder, so they only
# need to exist to keep nnU-Net quiet.
: "${nnUNet_raw:=$cache/nnUNet_raw}"
: "${nnUNet_preprocessed:=$cache/nnUNet_preprocessed}"
: "${nnUNet_results:=$cache/nnUNet_results}"
export MPLCONFIGDIR XDG_CACHE_HOME TORCH_HOME TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR \
    NUMBA_CACHE_DIR nnUNet_raw nnUNet_preprocessed nnUNet_results

exec /opt/spineseg/venv/bin/spineseg "$@"
