"""Weights: install from every kind of source, atomically, with hashes checked on each start."""

from __future__ import annotations

import functools
import hashlib
import http.server
import itertools
import json
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from bids_app.nnunet import weights as w
from bids_app.nnunet.weights import (
    RELEASES,
    WeightsError,
    WeightSet,
    install,
    install_weights,
    pack_release,
    releases,
    resolve_weights,
)

REL = "r20260730"
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_of(dataset_dir: Path) -> Path:
    return next(dataset_dir.glob("*__*__*/fold_0/checkpoint_*.pth"))


@pytest.fixture(scope="module")
def zips(tiny_models, tmp_path_factory) -> Path:
    """Folder holding the two official-layout release zips of the tiny models."""
    out = tmp_path_factory.mktemp("zips")
    pack_release([tiny_models["step1"], tiny_models["step2"]], out, REL)
    return out


@pytest.fixture
def server(zips):
    """A local HTTP server over the zips folder; yields (base URL, list of requested paths)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    handler = functools.partial(Handler, directory=str(zips))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", requested
    finally:
        httpd.shutdown()
        httpd.server_close()


def assert_installed(ws: WeightSet, root: Path, tiny_models) -> None:
    """Both datasets in place under root/<release>/, byte-identical, recorded in the manifest.

    The tiny models come from no official URL and are not the demo models: release unknown,
    whatever the folder is called.
    """
    assert ws.root == root and ws.release_dir == root / REL and ws.complete
    assert ws.release == "unknown"
    assert ws.step1 == root / REL / STEP1 and ws.step2 == root / REL / STEP2
    manifest = json.loads((root / REL / "manifest.json").read_text())
    assert manifest["release"] == "unknown"
    for step in ("step1", "step2"):
        installed, original = checkpoint_of(getattr(ws, step)), checkpoint_of(tiny_models[step])
        assert sha(installed) == sha(original)
        rel = installed.relative_to(root / REL).as_posix()
        entry = manifest["datasets"][installed.relative_to(root / REL).parts[0]]
        assert entry["files"][rel] == {"sha256": sha(installed), "size": installed.stat().st_size}
        assert ws.sha256[rel] == sha(installed)
        assert entry["installed"].endswith("+00:00")
    assert not list(root.glob(".tmp-install-*"))


def test_release_urls_follow_the_official_pattern():
    assert set(RELEASES) == {"r20260730", "r20251124"}
    assert RELEASES["r20251124"][STEP2] == (
        "https://github.com/neuropoly/totalspineseg/releases/download/r20251124/"
        "Dataset102_TotalSpineSeg_step2_r20251124.zip"
    )
    assert RELEASES[REL][STEP1].endswith(f"/{REL}/{STEP1}_{REL}.zip")


def test_pack_release_makes_official_layout_and_is_reproducible(tiny_models, zips, tmp_path):
    names = sorted(p.name for p in zips.iterdir())
    assert names == [f"{STEP1}_{REL}.zip", f"{STEP2}_{REL}.zip"]
    with zipfile.ZipFile(zips / names[0]) as zf:
        members = zf.namelist()
        assert zf.testzip() is None
    trainer_dir = f"{STEP1}/nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres"
    assert f"{trainer_dir}/fold_0/checkpoint_final.pth" in members
    assert f"{trainer_dir}/plans.json" in members
    again = pack_release([tiny_models["step1"]], tmp_path, REL)
    assert sha(again[0]) == sha(zips / names[0])


def test_install_from_single_zips_one_dataset_at_a_time(zips, tmp_path, tiny_models):
    root = tmp_path / "weights"
    first = install_weights(root, release=REL, source=zips / f"{STEP1}_{REL}.zip", progress=False)
    assert first.step1 == root / REL / STEP1 and first.step2 is None and not first.complete
    ws = install_weights(root, release=REL, source=zips / f"{STEP2}_{REL}.zip", progress=False)
    assert_installed(ws, root, tiny_models)
    manifest = json.loads((root / REL / "manifest.json").read_text())
    record = manifest["datasets"][STEP2]
    zip2 = zips / f"{STEP2}_{REL}.zip"
    assert record["zip"] == {"name": zip2.name, "sha256": sha(zip2)}
    assert record["source"] == str(zip2.resolve())
    assert ws.sha256[f"{STEP1}_{REL}.zip"] == sha(zips / f"{STEP1}_{REL}.zip")


def test_install_from_folder_of_zips(zips, tmp_path, tiny_models):
    root = tmp_path / "weights"
    assert_installed(
        install_weights(root, release=REL, source=zips, progress=False), root, tiny_models
    )


def test_install_from_file_url_prefix(zips, tmp_path, tiny_models):
    root = tmp_path / "weights"
    ws = install_weights(root, release=REL, source=zips.as_uri(), progress=False)
    assert_installed(ws, root, tiny_models)
    manifest = json.loads((root / REL / "manifest.json").read_text())
    assert manifest["datasets"][STEP1]["source"] == f"{zips.as_uri()}/{STEP1}_{REL}.zip"


def test_install_over_http_then_skips_download_when_present(server, tmp_path, tiny_models):
    base, requested = server
    root = tmp_path / "weights"
    ws = install_weights(root, release=REL, source=base, progress=False)
    assert_installed(ws, root, tiny_models)
    assert sorted(requested) == [f"/{STEP1}_{REL}.zip", f"/{STEP2}_{REL}.zip"]
    install_weights(root, release=REL, source=base, progress=False)
    assert len(requested) == 2  # verified install: nothing downloaded again
    install_weights(root, release=REL, source=base, progress=False, force=True)
    assert len(requested) == 4
    assert_installed(resolve_weights(root, env={}), root, tiny_models)


def test_http_errors_are_one_line(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsError, match=r"missing\.zip: download failed \(HTTP 404"):
        install_weights(tmp_path / "w", source=base + "missing.zip", progress=False)
    assert not (tmp_path / "w" / REL).exists()


@pytest.mark.parametrize("nested", [False, True])
def test_install_from_unpacked_folder_r20251124_layout(nested, dataset_builder, tmp_path):
    """r20251124 zips unpack to <release>/Dataset10x/nnUNetTrainer__.../fold_0/final only."""
    src = tmp_path / "unpacked"
    parent = src / "r20251124" if nested else src
    dataset_builder(parent, STEP1, 1, trainer="nnUNetTrainer")
    dataset_builder(parent, STEP2, 2, trainer="nnUNetTrainer")
    root = tmp_path / "weights"
    ws = install_weights(root, release="r20251124", source=src, progress=False)
    assert ws.complete and ws.step2 == root / "r20251124" / STEP2
    manifest = json.loads((root / "r20251124" / "manifest.json").read_text())
    assert manifest["datasets"][STEP1]["zip"] is None
    files = manifest["datasets"][STEP1]["files"]
    ckpt = f"{STEP1}/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    assert set(files) == {
        ckpt,
        f"{STEP1}/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json",
        f"{STEP1}/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json",
    }
    assert files[ckpt]["sha256"] == sha(root / "r20251124" / ckpt)
    assert (parent / STEP1).is_dir()  # the source is left alone


def test_bad_zip_leaves_no_trace(zips, tmp_path):
    bad = tmp_path / f"{STEP1}_{REL}.zip"
    data = (zips / bad.name).read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # an interrupted download
    root = tmp_path / "weights"
    with pytest.raises(WeightsError, match=f"^{bad}: corrupt or truncated zip"):
        install_weights(root, source=bad, progress=False)
    assert not (root / REL).exists()
    assert not list(root.glob(".tmp-install-*"))


def test_flipped_byte_in_zip_is_caught_by_crc(zips, tmp_path):
    bad = tmp_path / f"{STEP1}_{REL}.zip"
    data = bytearray((zips / bad.name).read_bytes())
    with zipfile.ZipFile(zips / bad.name) as zf:
        info = zf.getinfo(f"{STEP1}/nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres/plans.json")
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # inside the compressed data
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt or truncated zip"):
        install_weights(tmp_path / "weights", source=bad, progress=False)
    assert not (tmp_path / "weights" / REL).exists()


def test_zip_without_checkpoint_is_refused_and_old_install_kept(zips, tmp_path, tiny_models):
    root = tmp_path / "weights"
    install_weights(root, release=REL, source=zips, progress=False)
    broken_src = tmp_path / "broken" / STEP1
    shutil.copytree(tiny_models["step1"], broken_src)
    checkpoint_of(broken_src).unlink()  # pack_release refuses this, so zip it by hand
    zpath = tmp_path / f"{STEP1}_{REL}.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in broken_src.rglob("*"):
            zf.write(p, f"{STEP1}/{p.relative_to(broken_src)}")
    with pytest.raises(WeightsError, match=r"no checkpoint_best\.pth or checkpoint_final\.pth"):
        install_weights(root, release=REL, source=zpath, progress=False)
    assert_installed(resolve_weights(root, env={}), root, tiny_models)


def test_stale_temp_folder_of_a_killed_install_is_cleaned(zips, tmp_path, tiny_models):
    root = tmp_path / "weights"
    stale = root / ".tmp-install-killed" / "unpacked-0" / STEP1
    stale.mkdir(parents=True)
    assert_installed(
        install_weights(root, release=REL, source=zips, progress=False), root, tiny_models
    )
    assert not stale.parent.parent.exists()


def test_parallel_installs_do_not_race(zips, tmp_path, tiny_models, monkeypatch):
    """Cluster jobs sharing one weights folder: installs run one after the other."""
    root = tmp_path / "weights"
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    real_stage = install._stage

    def slow_stage(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.2)  # widen the window in which an unlocked install would overlap
        staged = real_stage(*args, **kwargs)
        spans.append((start, time.monotonic()))
        return staged

    monkeypatch.setattr(install, "_stage", slow_stage)

    def job():
        try:
            install_weights(root, release=REL, source=zips, progress=False, force=True)
        except BaseException as e:  # collected and checked in the main thread
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert_installed(resolve_weights(root, env={}), root, tiny_models)


def test_release_mismatch_is_explained(zips, tmp_path):
    with pytest.raises(WeightsError, match="zip of release r20260730, but release r20251124"):
        install_weights(tmp_path / "w", release="r20251124", source=zips / f"{STEP1}_{REL}.zip")
    with pytest.raises(WeightsError, match=r"no Dataset\*_r20251124\.zip .*pass the release"):
        install_weights(tmp_path / "w", release="r20251124", source=zips)
    with pytest.raises(WeightsError, match="no download URL known"):
        install_weights(tmp_path / "w", release="r19990101")
    with pytest.raises(WeightsError, match="no such file or folder"):
        install_weights(tmp_path / "w", source=tmp_path / "absent.zip")


# ----------------------------------------------------------------------------------------------
# resolve_weights


@pytest.fixture
def installed(zips, tmp_path) -> Path:
    root = tmp_path / "installed"
    install_weights(root, release=REL, source=zips, progress=False)
    return root


def test_tampered_checkpoint_is_detected_on_next_start(installed):
    ckpt = checkpoint_of(installed / REL / STEP2)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit changed
    ckpt.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        resolve_weights(installed, env={})
    message = str(info.value)
    assert message.startswith(f"{ckpt}: SHA-256 differs")
    assert message.endswith("reinstall with `spineseg weights --force`")


def test_truncated_or_missing_checkpoint_is_detected(installed):
    ckpt = checkpoint_of(installed / REL / STEP1)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=f"^{ckpt}: size 1000 differs .*--force"):
        resolve_weights(installed, env={})
    ckpt.unlink()
    with pytest.raises(WeightsError, match=r"no checkpoint_best\.pth or checkpoint_final\.pth"):
        resolve_weights(installed, env={})


def test_checkpoint_added_after_install_is_refused(installed):
    """A new checkpoint_best.pth would be loaded instead of the verified final one."""
    ckpt = checkpoint_of(installed / REL / STEP1)
    shutil.copyfile(ckpt, ckpt.with_name("checkpoint_best.pth"))
    with pytest.raises(WeightsError, match=r"checkpoint_best\.pth: not part of the installed"):
        resolve_weights(installed, env={})


def test_precedence_cli_then_env_then_user_dir(installed, zips, tmp_path, tiny_models):
    other = tmp_path / "other"
    install_weights(other, release=REL, source=zips, progress=False)
    xdg = tmp_path / "xdg"
    install_weights(xdg / "spineseg" / "weights", release=REL, source=zips, progress=False)
    env = {"SPINESEG_WEIGHTS": str(other), "XDG_DATA_HOME": str(xdg)}
    assert resolve_weights(installed, env=env).root == installed
    assert resolve_weights(env=env).root == other
    assert resolve_weights(env={"XDG_DATA_HOME": str(xdg)}).root == xdg / "spineseg" / "weights"
    assert w.default_weights_dir({"HOME": "/x"}) == Path("/x/.local/share/spineseg/weights")


def test_dataset_folders_directly_in_root_or_release_given(installed, tiny_models):
    direct = resolve_weights(installed / REL, env={})
    assert direct.release == "unknown" and direct.step1 == installed / REL / STEP1
    assert resolve_weights(installed, env={}, release=REL).step2 == installed / REL / STEP2
    with pytest.raises(WeightsError, match=r"release r20251124 not installed .*: r20260730\)"):
        resolve_weights(installed, env={}, release="r20251124")


def test_folder_without_manifest_is_recorded_on_first_use(tiny_models, tmp_path, caplog):
    """Folders unpacked by hand: usable, their hashes recorded (with a warning) on first use."""
    root = tmp_path / "handmade"
    for step in ("step1", "step2"):
        shutil.copytree(tiny_models[step], root / tiny_models[step].name)
    ws = resolve_weights(root, env={})
    assert ws.release == "unknown" and ws.complete and ws.release_dir == root
    ckpt = checkpoint_of(root / STEP1)
    rel = ckpt.relative_to(root).as_posix()
    assert ws.sha256[rel] == sha(ckpt)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["datasets"][STEP1]["files"][rel]["sha256"] == sha(ckpt)
    assert f"{root}: no manifest.json; recorded" in caplog.text
    assert f"in {root / 'manifest.json'} (first use)" in caplog.text


def test_missing_weights_point_to_the_install_command(tmp_path):
    with pytest.raises(WeightsError, match=r"weights folder not found; install them with"):
        resolve_weights(env={"XDG_DATA_HOME": str(tmp_path)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no TotalSpineSeg weights inside"):
        resolve_weights(tmp_path / "empty", env={})


def write_demo_readme(demo: Path) -> None:
    """The hash list `train.py export` writes into the demo README."""
    sums = [
        f"{sha(p)}  {p.relative_to(demo).as_posix()}"
        for p in sorted(demo.glob("Dataset10*/*/**/*"))
        if p.is_file()
    ]
    block = "\n".join(["```", *sums, "```"])
    (demo / "README.md").write_text(
        f"# demo\n\n<!-- demo-sha:start -->\n{block}\n<!-- demo-sha:end -->\n"
    )


def test_demo_models_only_when_asked(tiny_models, tmp_path, monkeypatch):
    demo = tmp_path / "demo_models"
    for step in ("step1", "step2"):
        shutil.copytree(tiny_models[step], demo / tiny_models[step].name)
    write_demo_readme(demo)
    monkeypatch.setattr(releases, "DEMO_DIR", demo)
    for ws in (
        resolve_weights(demo=True, env={}),
        resolve_weights("demo", env={}),
        resolve_weights(env={"SPINESEG_WEIGHTS": "demo"}),
    ):
        assert ws.release == "demo" and ws.step1 == demo / STEP1 and ws.complete
    assert not (demo / "manifest.json").exists()  # checked against the README, nothing written
    with pytest.raises(WeightsError, match="weights folder not found"):
        resolve_weights(env={"XDG_DATA_HOME": str(tmp_path / "nothing")})
