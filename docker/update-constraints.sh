#!/bin/sh
# Regenerate docker/constraints-image.txt (the image's lock of every Python package except
# the torch build and the app) from a built image, after a deliberate dependency update:
#   docker/update-constraints.sh localhost/spineseg:cpu-test   (podman, or ENGINE=docker)
# Review the diff, rebuild, rerun tests/container/run_container_test.sh, commit.
set -eu
image="${1:?usage: $0 IMAGE}"
engine="${ENGINE:-podman}"
out="$(dirname "$0")/constraints-image.txt"
{
    echo "# Lock of the image's Python packages (pip freeze of $image), used as pip"
    echo "# constraints by the Dockerfile; torch/torchvision/CUDA wheels come from TORCH_SPEC."
    echo "# Regenerate with docker/update-constraints.sh; do not edit by hand."
    "$engine" run --rm --network=none --entrypoint /opt/spineseg/venv/bin/pip "$image" \
        freeze --all --exclude pip --exclude setuptools --exclude wheel |
        grep -v -i -E '^(torch|torchvision|triton|spineseg)( |==)|^nvidia-' | LC_ALL=C sort -f
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -c '==' "$out") pins)"
