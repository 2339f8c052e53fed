#!/bin/sh
# Installed in the image as /opt/spineseg/bin/spineseg, first on PATH, so the ENTRYPOINT
# (docker run, apptainer run) and every `spineseg ...` typed in a shell (apptainer exec,
# Boutiques, CBRAIN) pass through here.
#
# Why: the image has no usable HOME (any UID, read-only root, HOME=/nonexistent or a
# read-only bind), yet matplotlib, torch/inductor and friends write caches on import and die
# or slow down when they cannot. Each cache variable the caller did not set is pointed at a
# private folder under the first writable of $TMPDIR, /tmp, /var/tmp (Python's own order for
# temporary files), or at $SPINESEG_CACHE_DIR. Nothing else is changed, and `exec` makes the
# app replace this shell so signals reach it directly.
set -eu

# A folder of ours: created with mode 0700, reused only if we own it and can write to it (a
# shared /tmp may hold another user's folder of the same name).
usable() { mkdir -p "$1" 2>/dev/null && [ "$(stat -c %u "$1")" = "$(id -u)" ] && [ -w "$1" ]; }

umask 077
cache=""
if [ -n "${SPINESEG_CACHE_DIR:-}" ]; then
    usable "$SPINESEG_CACHE_DIR" && cache="$SPINESEG_CACHE_DIR"
else
    for root in "${TMPDIR:-}" /tmp /var/tmp; do
        [ -n "$root" ] && [ -d "$root" ] && [ -w "$root" ] || continue
        if usable "$root/spineseg-cache-$(id -u)"; then
            cache="$root/spineseg-cache-$(id -u)"
        else
            cache="$(mktemp -d "$root/spineseg-cache-XXXXXX" 2>/dev/null)" || cache=""
        fi
        [ -n "$cache" ] && break
    done
fi
if [ -z "$cache" ]; then
    echo "spineseg: error: no writable temporary folder (TMPDIR=${TMPDIR:-unset}, /tmp," \
        "/var/tmp${SPINESEG_CACHE_DIR:+, SPINESEG_CACHE_DIR=$SPINESEG_CACHE_DIR});" \
        "bind a writable folder to /tmp" >&2
    exit 73
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
