# SpineSeg BIDS App image: whole-spine MRI segmentation with the official TotalSpineSeg weights.
#
# Default build: CUDA image with the official weights baked in (runs on CPU too when no GPU is
# given to the container):
#   docker build -t spineseg:0.1.0 .
# CPU-only image from the same file (much smaller: no CUDA libraries):
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#     --build-arg TORCH_SPEC="torch==2.13.0+cpu torchvision==0.28.0+cpu" -t spineseg:0.1.0-cpu .
# Weights from local zips (no GitHub access at build time), placed in docker/local/weights/:
#   docker build --build-arg WEIGHTS_SOURCE=docker/local/weights -t spineseg:0.1.0 .
# See README.md (Container image) for running it with Docker, Apptainer, SLURM and CBRAIN.

# The torch wheels carry their own CUDA runtime and cuDNN, so the base only has to supply the
# NVIDIA container settings (NVIDIA_VISIBLE_DEVICES, driver capabilities); a *-runtime or
# *-cudnn base would ship a second copy of the same libraries. Any Debian/Ubuntu image works.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11+ (the locked numpy needs it) with venv; bases that already have it (python:*,
# the CPU test base) skip apt.
# DL3008 (apt versions unpinned): the packages come from the base image's own release, whose
# archive drops superseded versions, so pins would break rebuilds; pin the base image instead.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# torch first, from its own index (or wheels in docker/local/wheels), then frozen into a
# constraints file: every later pip call must keep exactly this build, so nnunetv2 -> timm ->
# torchvision can never silently replace it with a different (e.g. CUDA 13) torch. The torch
# index is an *extra* index: the local tag (+cu128, +cpu) makes its build win over PyPI's,
# while torch's own dependencies resolve from PyPI at the versions of the image lock.
# cu128 wheels need an NVIDIA driver >= 525 (CUDA 12 minor-version compatibility).
ARG TORCH_SPEC="torch==2.13.0 torchvision==0.28.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
COPY constraints.txt docker/constraints-image.txt /opt/spineseg/
# TORCH_SPEC is left unquoted on purpose: it is a list of requirement specifiers.
RUN --mount=type=bind,source=docker/local,target=/mnt/local \
    python3 -m venv /opt/spineseg/venv \
    && /opt/spineseg/venv/bin/pip install --no-cache-dir --find-links /mnt/local/wheels \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c /opt/spineseg/constraints.txt -c /opt/spineseg/constraints-image.txt $TORCH_SPEC \
    && /opt/spineseg/venv/bin/pip freeze | grep -E '^torch(vision)?==' \
        > /opt/spineseg/torch-constraints.txt \
    && grep -q '^torch==' /opt/spineseg/torch-constraints.txt

# nnU-Net and its dependency tree (the slow, rarely changing layer), pinned by the project's
# constraints.txt and the image lock docker/constraints-image.txt, plus the BIDS validator
# (a Deno binary) the app runs on its input: without it a BIDS App skips validation.
RUN /opt/spineseg/venv/bin/pip install --no-cache-dir \
        -c /opt/spineseg/torch-constraints.txt -c /opt/spineseg/constraints.txt \
        -c /opt/spineseg/constraints-image.txt "nnunetv2==2.8.1" "bids-validator-deno==3.0.2"

# The app itself. COPY (not a bind mount) so that any change to the sources invalidates this
# layer: buildah/podman key a RUN's cache on its text only, not on what it mounts, and would
# otherwise reinstall stale code. The staging copy (a few MB) is removed after the install.
# bids_app/VERSION is the package-data copy of `version` that an installed package reads.
COPY pyproject.toml version README.md /tmp/spineseg-src/
COPY bids_app /tmp/spineseg-src/bids_app
RUN cp /tmp/spineseg-src/version /tmp/spineseg-src/bids_app/VERSION \
    && /opt/spineseg/venv/bin/pip install --no-cache-dir \
        -c /opt/spineseg/torch-constraints.txt -c /opt/spineseg/constraints.txt \
        -c /opt/spineseg/constraints-image.txt /tmp/spineseg-src \
    && rm -rf /tmp/spineseg-src \
    && /opt/spineseg/venv/bin/pip check

COPY docker/spineseg-entry.sh /opt/spineseg/bin/spineseg
COPY version /version
ENV PATH=/opt/spineseg/bin:/opt/spineseg/venv/bin:$PATH \
    SPINESEG_WEIGHTS=/opt/spineseg/weights

# Weights, installed and hashed by the app's own command into a fixed folder with a SHA-256
# manifest that every run re-checks. WEIGHTS_SOURCE: empty = download the release from
# GitHub; "demo" = the tiny demo models shipped in the package (CPU test image only); else a
# folder or zip inside the build context (docker/local/...). The zips are bind-mounted, not
# copied, to keep them out of the layers; podman/buildah do not notice a changed zip with the
# same name, so rebuild with --no-cache after replacing one.
ARG WEIGHTS_RELEASE=r20260730
ARG WEIGHTS_SOURCE=""
RUN --mount=type=bind,target=/mnt/ctx \
    case "$WEIGHTS_SOURCE" in \
        "") spineseg weights --release "$WEIGHTS_RELEASE" --dest "$SPINESEG_WEIGHTS" ;; \
        demo) spineseg weights --release demo --dest "$SPINESEG_WEIGHTS" --from \
                "$(python -c 'import bids_app.nnunet.weights as w; print(w.DEMO_DIR)')" ;; \
        *) spineseg weights --release "$WEIGHTS_RELEASE" --dest "$SPINESEG_WEIGHTS" \
                --from "/mnt/ctx/$WEIGHTS_SOURCE" ;; \
    esac \
    && rm -f "$SPINESEG_WEIGHTS/.install.lock" \
    && chmod -R a+rX,go-w "$SPINESEG_WEIGHTS"

# Any UID must be able to read code and weights (Apptainer and CBRAIN run as the user, Docker
# users pass -u) and none may write there. This is checked, not forced with a recursive chmod:
# that would copy every file of the venv into a new layer and double the image size.
# Build-time self-test last.
RUN chmod 0755 /opt/spineseg/bin/spineseg \
    && bad="$(find /opt/spineseg /version ! -type l \( ! -perm -a+r -o -perm /go+w \
        -o -type d ! -perm -a+x \) -print -quit)" \
    && if [ -n "$bad" ]; then echo "not world-readable or writable by others: $bad"; exit 1; fi \
    && spineseg --version \
    && spineseg --version | grep -qF "$(cat /version)" \
    && python -c "import torch, nnunetv2; print('torch', torch.__version__)" \
    && spineseg weights --verify

# Runtime environment: no HOME (the entry script sends caches to $TMPDIR), no user site
# packages from a bound host HOME, no .pyc writes on a read-only root.
# NVIDIA_*: ask the container toolkit for the driver's compute libraries whatever the base,
# and accept any CUDA 12 driver (>= 525): the cu128 wheels run there through CUDA's
# minor-version compatibility, while nvidia/cuda:12.8 bases would demand a 12.8 driver.
ENV PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.0"

ARG BASE_IMAGE
ARG SPINESEG_VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
# What the image calls itself in every output's GeneratedBy.Container (the builder names it).
ARG IMAGE_TAG="spineseg:${SPINESEG_VERSION}"
ENV SPINESEG_CONTAINER_TAG="${IMAGE_TAG}"
LABEL org.opencontainers.image.title="SpineSeg" \
      org.opencontainers.image.description="Whole-spine MRI segmentation (TotalSpineSeg method, nnU-Net) as a BIDS App" \
      org.opencontainers.image.version="${SPINESEG_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.spineseg.model.release="${WEIGHTS_RELEASE}" \
      org.spineseg.model.source="${WEIGHTS_SOURCE}"

WORKDIR /tmp
ENTRYPOINT ["spineseg"]
