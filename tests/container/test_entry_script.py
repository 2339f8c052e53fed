"""docker/spineseg-entry.sh: caches go to a private writable folder, never to HOME.

The script is what `spineseg` resolves to inside the image. It is run here with its final
`exec` pointed at `env`, so the test sees the environment the app would start with.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "spineseg-entry.sh"
CACHE_VARS = (
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "TORCH_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "nnUNet_raw",
    "nnUNet_preprocessed",
    "nnUNet_results",
)


@pytest.fixture
def entry(tmp_path) -> Path:
    text = SCRIPT.read_text()
    assert 'exec /opt/spineseg/venv/bin/spineseg "$@"' in text
    script = tmp_path / "entry.sh"
    script.write_text(text.replace('exec /opt/spineseg/venv/bin/spineseg "$@"', 'exec env "$@"'))
    return script


def _run(script: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    return subprocess.run(
        ["sh", str(script)], env={**base, **env}, capture_output=True, text=True, check=False
    )


def _env(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def test_caches_go_to_a_private_folder_under_tmpdir(entry, tmp_path):
    tmpdir = tmp_path / "scratch"
    tmpdir.mkdir()
    env = _env(_run(entry, TMPDIR=str(tmpdir)))
    cache = tmpdir / f"spineseg-cache-{os.getuid()}"
    for var in CACHE_VARS:
        assert Path(env[var]).parent == cache, var
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert env["HOME"] == "/nonexistent"  # HOME is left alone


def test_values_set_by_the_caller_are_kept(entry, tmp_path):
    env = _env(_run(entry, TMPDIR=str(tmp_path), MPLCONFIGDIR="/somewhere/mpl"))
    assert env["MPLCONFIGDIR"] == "/somewhere/mpl"
    assert env["TORCH_HOME"].startswith(str(tmp_path))


def test_missing_tmpdir_falls_back_like_python(entry):
    env = _env(_run(entry, TMPDIR="/nonexistent/scratch"))
    assert env["MPLCONFIGDIR"].startswith(("/tmp/spineseg-cache-", "/var/tmp/spineseg-cache-"))


def test_spineseg_cache_dir_is_used_as_is(entry, tmp_path):
    env = _env(_run(entry, SPINESEG_CACHE_DIR=str(tmp_path / "c")))
    assert env["XDG_CACHE_HOME"] == str(tmp_path / "c" / "xdg")


def test_unusable_cache_dir_is_a_one_line_error_with_exit_73(entry):
    proc = _run(entry, SPINESEG_CACHE_DIR="/proc/spineseg-cache")
    assert proc.returncode == 73
    assert proc.stderr.startswith("spineseg: error: no writable temporary folder")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_arguments_and_exit_status_pass_through(entry, tmp_path):
    proc = _run(entry, TMPDIR=str(tmp_path))
    assert proc.returncode == 0
    args = subprocess.run(
        ["sh", str(entry), "sh", "-c", 'printf "%s|" "$@"; exit 17', "x", "a b", "--c"],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert args.stdout == "a b|--c|"
    assert args.returncode == 17
