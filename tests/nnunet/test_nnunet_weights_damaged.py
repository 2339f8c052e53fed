"""A damaged checkpoint is refused on every path, also where no manifest vouches for it yet.

A folder without a manifest gets one at first use, and an install records hashes: if those
were taken from a damaged file, the damage would become the reference. So every checkpoint's
zip CRCs are checked before any hash is recorded. Tested on copies of the shipped demo models
with one flipped byte (what a bad disk or an interrupted copy leaves).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from bids_app.cli.main import main
from bids_app.lesions.weights import DEMO_LESION, install_lesion_model, resolve_lesion_model
from bids_app.nnunet.weights import (
    DEMO_DIR,
    STEP1,
    STEP2,
    WeightsError,
    check_checkpoint,
    install_weights,
    resolve_weights,
)


def checkpoint_of(folder: Path) -> Path:
    return next(folder.glob("**/fold_0/checkpoint_*.pth"))


def member_offsets(path: Path) -> dict[str, int]:
    """Where the stored bytes of each zip member start (a flip there changes the model)."""
    with zipfile.ZipFile(path) as zf:
        offsets = {}
        with open(path, "rb") as fh:
            for info in zf.infolist():
                fh.seek(info.header_offset + 26)
                name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in range(2))
                offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
        return {n: o for n, o in offsets.items() if zf.getinfo(n).compress_size > 0}


def flip(path: Path, offset: int) -> None:
    """Change one bit of one byte, in place."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


@pytest.fixture
def copy(tmp_path) -> Path:
    """The demo spine models as a user copies them: the two Dataset folders, no manifest."""
    for name in (STEP1, STEP2):
        shutil.copytree(DEMO_DIR / name, tmp_path / "weights" / name)
    return tmp_path / "weights"


def where(path: Path) -> list[int]:
    """Offsets to damage: the start of every member's data (the pickle, each tensor...),
    the middle of the file and its last byte (the zip's own directory)."""
    size = path.stat().st_size
    return sorted({*member_offsets(path).values(), size // 2, size - 1})


def test_every_flipped_byte_of_a_checkpoint_without_manifest_is_refused(copy, tmp_path):
    ckpt = checkpoint_of(copy / STEP2)
    original = ckpt.read_bytes()
    offsets = where(ckpt)
    assert len(offsets) > 5  # the pickle, the tensors, the version, the directory
    for offset in offsets:
        ckpt.write_bytes(original)
        flip(ckpt, offset)
        with pytest.raises(WeightsError) as info:
            resolve_weights(copy, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
        message = str(info.value)
        assert message.startswith(f"{ckpt}: damaged checkpoint"), (offset, message)
        assert "\n" not in message
        assert not (copy / "manifest.json").exists()  # the damage is never recorded
        assert not (tmp_path / "cache").exists()
    ckpt.write_bytes(original)
    assert resolve_weights(copy, env={}).release == "demo"  # the intact copy is accepted


def test_a_flipped_byte_in_any_header_of_the_zip_is_refused(tmp_path):
    """Outside the members' data (where the CRCs speak): local headers, torch.save's
    padding, data descriptors, the directory and the end records."""
    source = checkpoint_of(DEMO_DIR / STEP1)
    original = source.read_bytes()
    data = sorted(member_offsets(source).items(), key=lambda item: item[1])
    with zipfile.ZipFile(source) as zf:
        spans = [(start, start + zf.getinfo(name).compress_size) for name, start in data]
    outside = [i for i in range(len(original)) if not any(a <= i < b for a, b in spans)]
    unused = len(original) - 22 - 20 - 56 + 12  # ZIP64 end record's "version made by"
    ckpt = tmp_path / "checkpoint_final.pth"
    ckpt.write_bytes(original)
    missed = []
    for offset in outside[::17]:  # every part of every header, in about 500 checks
        flip(ckpt, offset)
        try:
            check_checkpoint(ckpt)
        except WeightsError as e:
            assert str(e).startswith(f"{ckpt}: damaged checkpoint"), str(e)
        else:
            missed.append(offset)
        flip(ckpt, offset)  # back
    assert set(missed) <= {unused, unused + 1}, missed


def test_a_truncated_checkpoint_without_manifest_is_refused(copy):
    ckpt = checkpoint_of(copy / STEP1)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size - 100])
    with pytest.raises(WeightsError, match=f"^{ckpt}: damaged checkpoint \\(not a readable"):
        resolve_weights(copy, env={})


def test_the_participant_level_exits_78_naming_the_damaged_file(copy, dataset, tmp_path, capsys):
    ckpt = checkpoint_of(copy / STEP1)
    flip(ckpt, ckpt.stat().st_size // 2)

    def never_called(*args, **kwargs):
        raise AssertionError("the engine must not be built from refused weights")

    argv = [str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main([*argv, "--weights", str(copy)], engine_factory=never_called) == 78
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"spineseg: error: {ckpt}: damaged checkpoint")


def test_installing_a_folder_with_a_damaged_checkpoint_is_refused(copy, tmp_path):
    ckpt = checkpoint_of(copy / STEP2)
    flip(ckpt, ckpt.stat().st_size // 2)
    dest = tmp_path / "installed"
    with pytest.raises(WeightsError, match="damaged checkpoint"):
        install_weights(dest, source=copy, progress=False)
    assert not any(p.name.startswith("Dataset") for p in dest.rglob("*"))


def test_a_lesion_model_without_manifest_with_a_flipped_byte_is_refused(tmp_path):
    folder = tmp_path / "lesion"
    shutil.copytree(DEMO_LESION, folder, ignore=shutil.ignore_patterns("manifest.json"))
    ckpt = checkpoint_of(folder)
    flip(ckpt, ckpt.stat().st_size // 2)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    with pytest.raises(WeightsError, match=f"^{ckpt}: damaged checkpoint"):
        resolve_lesion_model(folder, env=env)
    assert not (folder / "manifest.json").exists()
    with pytest.raises(WeightsError, match="damaged checkpoint"):
        install_lesion_model(folder, tmp_path / "installed")
