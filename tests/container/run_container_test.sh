#!/usr/bin/env bash
# End-to-end test of the SpineSeg image, run the way a cluster runs it.
#
# Builds the CPU variant of ./Dockerfile (demo weights) with podman, then runs the BIDS App on
# a two-subject phantom dataset with a read-only root, an arbitrary UID, no HOME, no network
# and no capabilities (what Apptainer and CBRAIN impose), validates the derivatives with
# bids-validator-deno and launches the participant example through Boutiques (`bosh exec
# launch`) against podman's Docker-compatible socket. Prints how long each part took.
#
# Usage: tests/container/run_container_test.sh [--build-only] [--keep]
#   --build-only  stop after building the image and checking `spineseg --version` in it
#   --keep        keep the temporary folder (data, outputs, logs) even when everything passed
# Environment: SPINESEG_TEST_IMAGE (default localhost/spineseg:cpu-test), SPINESEG_HOST_BIN
# (host `spineseg` used to write the phantom dataset; default .venv/bin/spineseg),
# SPINESEG_TEST_WEIGHTS (a weights folder or zip to bake instead of the package's demo models;
# copied into the git-ignored docker/local/test-weights) with SPINESEG_TEST_WEIGHTS_RELEASE.
# Exit status: 0 passed or skipped (prints SKIP and why), 1 failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${SPINESEG_TEST_IMAGE:-localhost/spineseg:cpu-test}"
DEBIAN_IMAGE=localhost/debian:bookworm
# The documented CPU base (see Dockerfile); here an offline stand-in with the same Python.
CPU_BASE=localhost/python:3.11-slim-bookworm
VENV_BIN="$REPO/.venv/bin"
HOST_SPINESEG="${SPINESEG_HOST_BIN:-$VENV_BIN/spineseg}"
BUILD_ONLY=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --build-only) BUILD_ONLY=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 64 ;;
    esac
done

skip() { echo "SKIP: $*"; exit 0; }
json_get() {  # json_get FILE KEY: one top-level value of a JSON file
    "$VENV_BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"
}
fail() { echo "FAIL: $*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# Timings: every phase goes through `timed NAME cmd...`; the table is printed at exit.
declare -a TIMES=()
timed() {
    local name="$1" start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    TIMES+=("$(awk -v n="$name" -v a="$start" -v b="$end" \
        'BEGIN{printf "%-38s %8.1f s", n, b - a}')")
}
print_times() {
    [ "${#TIMES[@]}" -gt 0 ] || return 0
    echo
    echo "== Timings"
    printf '%s\n' "${TIMES[@]}"
}

# ---------------------------------------------------------------------------------------------
# Engine: podman, installed from Debian when we are root and it is missing.
if ! command -v podman >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing podman (apt-get)"
        if ! { nice -n 19 apt-get update -q && DEBIAN_FRONTEND=noninteractive nice -n 19 \
            apt-get install -y -q podman buildah runc debootstrap; } >/dev/null 2>&1; then
            skip "no container engine: podman is not installed and apt-get could not install it"
        fi
    else
        skip "no container engine: podman is not installed (needs root to install it)"
    fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spineseg-container-test.XXXXXX")"
SERVICE_PID=""
cleanup() {
    local rc=$?
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    print_times
    if [ "$rc" -ne 0 ] || [ "$KEEP" -eq 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Two settings our machines need (nothing in /etc is changed): no rlimit raise, runc.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
if ! err="$(podman info 2>&1 >/dev/null)"; then
    skip "podman cannot run here: $(printf '%s' "$err" | tail -n 1)"
fi

# ---------------------------------------------------------------------------------------------
# Base images, made locally (no registry): debootstrapped Debian, then the CPU base stand-in.
make_debian() {
    local mirror
    mirror="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    nice -n 19 debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 ||
        fail "debootstrap failed; see $WORK/debootstrap.log"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$WORK/rootfs/etc/apt/sources.list.d/"
        rm -f "$WORK/rootfs/etc/apt/sources.list"
    fi
    # The host's apt settings (e.g. a mirror's date checks) carry over when present.
    cp /etc/apt/apt.conf.d/99artifact-registry "$WORK/rootfs/etc/apt/apt.conf.d/" 2>/dev/null ||
        true
    tar -C "$WORK/rootfs" -c . |
        podman import -q --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
}
make_cpu_base() {
    mkdir -p "$WORK/empty"
    nice -n 19 podman build --pull=never -q -t "$CPU_BASE" \
        -f "$REPO/tests/container/stand-in-base.Containerfile" "$WORK/empty" >/dev/null
}
if ! podman image exists "$DEBIAN_IMAGE"; then
    if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null 2>&1; then
        skip "$DEBIAN_IMAGE is missing and debootstrap (as root) is not available to make it"
    fi
    log "base: debootstrap $DEBIAN_IMAGE"
    timed "base: debootstrap + import" make_debian
fi
if ! podman image exists "$CPU_BASE"; then
    log "base: $CPU_BASE (stand-in: Debian python3 + venv)"
    timed "base: CPU base stand-in" make_cpu_base
fi

# ---------------------------------------------------------------------------------------------
# Build the CPU variant: torch from pip's find-links (copied into the git-ignored
# docker/local/wheels), host CA and a minimal pip.conf mounted for the build only.
TORCH_VERSION="$(sed -n 's/^torch==//p' "$REPO/constraints.txt")"
[ -n "$TORCH_VERSION" ] || fail "constraints.txt pins no torch version"
find_links="$({
    printf '%s\n' "${PIP_FIND_LINKS:-}"
    "$VENV_BIN/pip" config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p"
} | tr ' ' '\n' | sed 's#^file://##' | grep -v '^$' | sort -u || true)"
wheel=""
for dir in $find_links; do
    [ -d "$dir" ] || continue
    wheel="$(find "$dir" -maxdepth 1 -name "torch-${TORCH_VERSION}+cpu-cp311-*.whl" | head -n 1)"
    [ -n "$wheel" ] && break
done
mkdir -p "$REPO/docker/local/wheels"
if [ -n "$wheel" ]; then
    cp -u "$wheel" "$REPO/docker/local/wheels/"
    torch_index=""
else
    echo "no local torch ${TORCH_VERSION}+cpu wheel; the build downloads it"
    torch_index="https://download.pytorch.org/whl/cpu"
fi
weights_source=demo
weights_release=demo
if [ -n "${SPINESEG_TEST_WEIGHTS:-}" ]; then
    [ -e "$SPINESEG_TEST_WEIGHTS" ] || fail "SPINESEG_TEST_WEIGHTS=$SPINESEG_TEST_WEIGHTS not found"
    local_weights="$REPO/docker/local/test-weights"
    if [ "$(realpath "$SPINESEG_TEST_WEIGHTS")" != "$(realpath -m "$local_weights")" ]; then
        rm -rf "$local_weights"
        mkdir -p "$local_weights"
        if [ -d "$SPINESEG_TEST_WEIGHTS" ]; then  # an unpacked release: its contents
            cp -r "$SPINESEG_TEST_WEIGHTS"/. "$local_weights"/
        else  # a release zip, kept under its own name
            cp "$SPINESEG_TEST_WEIGHTS" "$local_weights"/
        fi
    fi
    weights_source=docker/local/test-weights
    weights_release="${SPINESEG_TEST_WEIGHTS_RELEASE:-demo}"
fi
build_args=(
    --build-arg "BASE_IMAGE=$CPU_BASE"
    --build-arg "TORCH_INDEX_URL=$torch_index"
    --build-arg "TORCH_SPEC=torch==${TORCH_VERSION}+cpu"
    --build-arg "WEIGHTS_SOURCE=$weights_source"
    --build-arg "WEIGHTS_RELEASE=$weights_release"
    --build-arg "SPINESEG_VERSION=$(cat "$REPO/version")"
    --build-arg "IMAGE_TAG=$IMAGE"
    --build-arg "VCS_REF=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
)
build_mounts=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    printf '[global]\ncert = /run/host-ca.crt\n' >"$WORK/build-pip.conf"
    build_mounts=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro
        -v "$WORK/build-pip.conf:/etc/pip.conf:ro")
fi
build_image() {
    nice -n 19 podman build --pull=never --format docker "${build_mounts[@]}" "${build_args[@]}" \
        -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >"$WORK/build.log" 2>&1 || {
        tail -n 40 "$WORK/build.log"
        fail "image build failed; full log in $WORK/build.log"
    }
}
log "build: $IMAGE"
timed "build: app image (CPU, $weights_source weights)" build_image
podman image inspect --format '{{.Size}}' "$IMAGE" |
    awk '{printf "image size: %.2f GB\n", $1 / 1e9}'

# The way a cluster runs it: read-only root, any UID, no HOME, no network, no capabilities.
# shellcheck disable=SC2054  # the commas are tmpfs mount options, not array separators
RUN_OPTS=(--rm --pull=never --read-only --read-only-tmpfs=false --user 1000:1000
    -e HOME=/nonexistent --network=none --cap-drop=all --security-opt=no-new-privileges
    --tmpfs /tmp:rw,size=4g,mode=1777)
version="$(cat "$REPO/version")"
version_in_image="$(podman run "${RUN_OPTS[@]}" "$IMAGE" --version)"
echo "spineseg --version in the image: $version_in_image"
grep -qF "$version" <<<"$version_in_image" ||
    fail "image reports '$version_in_image', the version file says $version"
label="$(podman image inspect "$IMAGE" \
    --format '{{index .Labels "org.opencontainers.image.version"}}')"
[ "$label" = "$version" ] || fail "OCI version label is '$label', expected $version"
# The baked weights verify against their manifest as an unprivileged user.
podman run "${RUN_OPTS[@]}" "$IMAGE" weights --verify >"$WORK/weights-verify.log" 2>&1 || {
    cat "$WORK/weights-verify.log"
    fail "spineseg weights --verify failed in the image"
}
head -n 1 "$WORK/weights-verify.log"
# The app validates its input with bids-validator-deno when present: it must run in here.
podman run "${RUN_OPTS[@]}" --entrypoint bids-validator-deno "$IMAGE" --version ||
    fail "bids-validator-deno does not run in the image"
[ "$BUILD_ONLY" -eq 1 ] && { echo "PASS (build only)"; exit 0; }

# ---------------------------------------------------------------------------------------------
# Participant and group runs on a phantom dataset.
log "data: phantom BIDS dataset (2 subjects)"
make_phantoms() {
    OMP_NUM_THREADS=1 nice -n 19 "$HOST_SPINESEG" phantoms "$WORK/data" --subjects 2 \
        >"$WORK/phantoms.log" 2>&1 || fail "spineseg phantoms failed; see $WORK/phantoms.log"
}
timed "data: phantoms" make_phantoms
chmod -R a+rX "$WORK/data"
mkdir -p "$WORK/out"
chown 1000:1000 "$WORK/out" 2>/dev/null || chmod 0777 "$WORK/out"
MOUNTS=(-v "$WORK/data:/data:ro" -v "$WORK/out:/out")

rc=0
podman run "${RUN_OPTS[@]}" "${MOUNTS[@]}" "$IMAGE" /data /out nonsense >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 17 ] || fail "unknown analysis level exited $rc, expected 17"

run_level() {
    podman run "${RUN_OPTS[@]}" "${MOUNTS[@]}" "$IMAGE" /data /out "$@" \
        >"$WORK/run-$1.log" 2>&1 || {
        tail -n 30 "$WORK/run-$1.log"
        fail "spineseg $* failed in the container; see $WORK/run-$1.log"
    }
}
log "run: participant"
timed "run: participant (2 subjects, CPU)" run_level participant --device cpu
log "run: group"
timed "run: group" run_level group

# ---------------------------------------------------------------------------------------------
# Checks a user would make: valid BIDS derivatives, every image segmented, stamps say ok,
# reports and group files present, files owned by the UID the job ran as.
log "check: outputs"
"$VENV_BIN/bids-validator-deno" "$WORK/out" --format json \
    >"$WORK/validator.json" 2>"$WORK/validator.err" || true
"$VENV_BIN/python" - "$WORK/validator.json" <<'EOF' || fail "bids-validator-deno found errors"
import json, sys
report = json.load(open(sys.argv[1]))
issues = report.get("issues", {}).get("issues", [])
errors = [i for i in issues if i.get("severity") == "error"]
for issue in errors:
    print("  error:", issue.get("code"), issue.get("location"))
print(f"bids-validator-deno: {len(errors)} errors, {len(issues) - len(errors)} warnings")
sys.exit(1 if errors else 0)
EOF
missing=0
expect() { [ -e "$1" ] || { echo "  missing: ${1#"$WORK"/}"; missing=$((missing + 1)); }; }
expect "$WORK/out/dataset_description.json"
expect "$WORK/out/seg-spine_dseg.tsv"
# The image names itself in the provenance of what it writes.
grep -qF "\"Tag\": \"$IMAGE\"" "$WORK/out/dataset_description.json" \
    || { echo "  GeneratedBy.Container.Tag is not $IMAGE"; missing=$((missing + 1)); }
n_images=0
while IFS= read -r src; do
    n_images=$((n_images + 1))
    rel="${src#"$WORK"/data/}"
    dir="$(dirname "$rel")"
    name="$(basename "$rel" .nii.gz)"
    suffix="${name##*_}"
    stem="${name%_*}"
    expect "$WORK/out/$dir/${stem}_seg-spine_desc-${suffix}_dseg.nii.gz"
    expect "$WORK/out/$dir/${stem}_seg-spine_desc-${suffix}_dseg.json"
    stamp="$WORK/out/logs/status/$name.json"
    expect "$stamp"
    if [ -f "$stamp" ]; then
        status="$(json_get "$stamp" status)"
        [ "$status" = ok ] || { echo "  $name: status $status"; missing=$((missing + 1)); }
    fi
done < <(find "$WORK/data" -path "$WORK/data/derivatives" -prune -o -path '*/anat/*' \
    \( -name '*_T1w.nii.gz' -o -name '*_T2w.nii.gz' \) -print | sort)
[ "$n_images" -gt 0 ] || fail "the phantom dataset has no T1w/T2w images"
for sub in "$WORK"/data/sub-*/; do
    sub="$(basename "$sub")"
    expect "$WORK/out/$sub.html"
    expect "$WORK/out/$sub/figures"
done
expect "$WORK/out/group.html"
compgen -G "$WORK/out/group_*.tsv" >/dev/null || expect "$WORK/out/group_*.tsv"
foreign="$(find "$WORK/out" ! -uid 1000 | head -n 3)"
[ -z "$foreign" ] || { echo "  not owned by UID 1000: $foreign"; missing=$((missing + 1)); }
[ "$missing" -eq 0 ] || fail "$missing expected outputs missing or not ok"
echo "all outputs present for $n_images images"

# ---------------------------------------------------------------------------------------------
# Boutiques: the shipped participant descriptor and example invocation, launched through the
# Docker API of podman (only the image name points at the test image).
log "bosh: exec launch (participant example)"
SOCK="$WORK/podman.sock"
podman system service --time=0 "unix://$SOCK" >"$WORK/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.2; done
[ -S "$SOCK" ] || fail "podman system service did not start; see $WORK/podman-service.log"
mkdir -p "$WORK/bosh"
"$VENV_BIN/python" - "$REPO/descriptors" "$WORK/bosh" "$IMAGE" <<'EOF'
import json, sys
from pathlib import Path
src, dst, image = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
desc = json.loads((src / "spineseg_participant.json").read_text())
desc["container-image"]["image"] = image
desc["container-image"].pop("index", None)
(dst / "descriptor.json").write_text(json.dumps(desc, indent=2))
EOF
# The shipped example invocation, as it is.
cp "$REPO/descriptors/invocations/participant.json" "$WORK/bosh/invocation.json"
bids_name="$(json_get "$WORK/bosh/invocation.json" bids_dir)"
out_name="$(json_get "$WORK/bosh/invocation.json" output_dir_name)"
cp -r "$WORK/data" "$WORK/bosh/$bids_name"
bosh_launch() {
    (cd "$WORK/bosh" && DOCKER_HOST="unix://$SOCK" "$VENV_BIN/bosh" exec launch --no-pull \
        descriptor.json invocation.json) >"$WORK/bosh.log" 2>&1 || {
        tail -n 30 "$WORK/bosh.log"
        fail "bosh exec launch failed; see $WORK/bosh.log"
    }
}
timed "bosh: exec launch participant" bosh_launch
find "$WORK/bosh/$out_name" -name '*_seg-spine_desc-*_dseg.nii.gz' 2>/dev/null | grep -q . ||
    fail "bosh exec launch wrote no segmentation under $out_name"
kill "$SERVICE_PID" && wait "$SERVICE_PID" 2>/dev/null || true
SERVICE_PID=""
echo "bosh exec launch: ok"

echo
echo "PASS"
