"""Weights the user points at are checked, labelled and installed honestly.

A folder without manifest is recorded on first use and refused once changed; incomplete or
damaged folders and zips are one-line errors (exit 78); the release written into outputs is
what the sources and hashes prove; a failed install leaves nothing behind and says what to do.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bids_app.bids.derivatives import ModelInfo, dataset_description
from bids_app.cli.main import main
from bids_app.nnunet import weights as w
from bids_app.nnunet.weights import (
    WeightsError,
    install,
    install_weights,
    pack_release,
    releases,
    resolve_weights,
)
from bids_app.nnunet.weights import manifest as weights_manifest

REL = "r20260730"
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"
SHIPPED_DEMO = w.DEMO_DIR
WHAT_TO_DO = (
    "offline, install the release zips with `spineseg weights --from DIR|ZIP`, "
    "run with `--weights DIR`, or try the demo models with `--weights demo`"
)


def checkpoint_of(dataset_dir: Path) -> Path:
    return next(dataset_dir.glob("*__*__*/fold_0/checkpoint_*.pth"))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit changed
    path.write_bytes(bytes(data))


def copy_datasets(src: Path, dest: Path) -> Path:
    """The two Dataset folders of `src` alone, as a user copies them (no manifest, no README)."""
    for name in (STEP1, STEP2):
        shutil.copytree(src / name, dest / name)
    return dest


def only_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def never_called(*args, **kwargs):
    raise AssertionError("the engine must not be built from refused weights")


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    return copy_datasets(SHIPPED_DEMO, tmp_path / "copied")


@pytest.fixture
def tiny_zip(tiny_models, tmp_path) -> Path:
    return pack_release([tiny_models["step1"]], tmp_path / "zips", REL)[0]


@pytest.fixture
def no_network(monkeypatch):
    """The official URLs point at a closed local port: what a machine without network sees."""
    urls = {
        rel: {name: f"http://127.0.0.1:9/{rel}/{name}_{rel}.zip" for name in (STEP1, STEP2)}
        for rel in w.RELEASES
    }
    monkeypatch.setattr(releases, "RELEASES", urls)


# ---------------------------------------------------------------------------------------------
# 3. A folder without manifest is recorded on first use, then changes are refused


def test_copied_demo_folder_is_recorded_then_a_flipped_byte_is_refused(demo_copy, caplog):
    first = resolve_weights(demo_copy, env={})
    manifest = demo_copy / "manifest.json"
    assert manifest.is_file()
    assert f"{demo_copy}: no manifest.json; recorded" in caplog.text
    assert f"in {manifest} (first use)" in caplog.text
    assert first.release == "demo"  # same files as the shipped demo models
    ckpt = checkpoint_of(demo_copy / STEP2)
    assert first.sha256[ckpt.relative_to(demo_copy).as_posix()] == w.sha256_file(ckpt)

    flip_byte(ckpt)
    with pytest.raises(WeightsError) as info:
        resolve_weights(demo_copy, env={})
    message = str(info.value)
    assert message.startswith(f"{ckpt}: SHA-256 differs from {manifest}")
    assert f"delete {manifest} to record the folder as it is now" in message
    assert "\n" not in message


def test_read_only_folder_is_recorded_in_the_user_cache(demo_copy, tmp_path, monkeypatch, caplog):
    real_write = weights_manifest.write_json_atomic

    def read_only_folder(path: Path, data: dict) -> None:
        if path.parent == demo_copy:
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, data)

    monkeypatch.setattr(weights_manifest, "write_json_atomic", read_only_folder)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert resolve_weights(demo_copy, env=env).release == "demo"
    assert not (demo_copy / "manifest.json").exists()
    (cached,) = (tmp_path / "cache" / "spineseg" / "manifests").glob("*.json")
    assert json.loads(cached.read_text())["folder"] == str(demo_copy.resolve())
    assert f"in {cached} (first use)" in caplog.text

    resolve_weights(demo_copy, env=env)  # verified against the cache, nothing new written
    assert len(list(cached.parent.iterdir())) == 1
    ckpt = checkpoint_of(demo_copy / STEP1)
    flip_byte(ckpt)
    with pytest.raises(WeightsError, match=f"^{ckpt}: SHA-256 differs from {cached}"):
        resolve_weights(demo_copy, env=env)


def test_folder_is_refused_when_no_manifest_can_be_written(demo_copy, tmp_path, monkeypatch):
    def nothing_writable(path: Path, data: dict) -> None:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(weights_manifest, "write_json_atomic", nothing_writable)
    with pytest.raises(WeightsError) as info:
        resolve_weights(demo_copy, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    message = str(info.value)
    assert message.startswith(f"{demo_copy}: no manifest.json, and neither this folder nor")
    assert "(Read-only file system)" in message
    assert "\n" not in message


@pytest.mark.parametrize("way", ["--weights DIR", "SPINESEG_WEIGHTS", "default folder", "demo"])
def test_changed_file_exits_78_whichever_way_the_weights_are_chosen(
    way, demo_copy, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("SPINESEG_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if way == "default folder":
        folder = tmp_path / "xdg" / "spineseg" / "weights" / "mine"
        shutil.move(demo_copy, folder)
    elif way == "demo":
        folder = demo_copy
        shutil.copy(SHIPPED_DEMO / "README.md", folder / "README.md")  # the known hashes
        monkeypatch.setattr(releases, "DEMO_DIR", folder)
    else:
        folder = demo_copy
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")  # never read: the weights are refused first
    args = ["segment", str(scan), str(tmp_path / "out")]
    if way == "--weights DIR":
        args += ["--weights", str(folder)]
    elif way == "demo":
        args += ["--weights", "demo"]
    elif way == "SPINESEG_WEIGHTS":
        monkeypatch.setenv("SPINESEG_WEIGHTS", str(folder))
    if way != "demo":
        resolve_weights(folder, env={})  # first use: recorded
    ckpt = checkpoint_of(folder / STEP1)
    flip_byte(ckpt)
    assert main(args, engine_factory=never_called) == 78
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"spineseg: error: {ckpt}: SHA-256 differs")


def test_unchanged_shipped_demo_models_verify_without_writing_there():
    ws = resolve_weights("demo", env={})
    assert ws.release == "demo" and ws.complete
    assert not (SHIPPED_DEMO / "manifest.json").exists()
    readme = (SHIPPED_DEMO / "README.md").read_text()
    for rel, digest in ws.sha256.items():
        assert f"{digest}  {rel}" in readme


def test_shipped_demo_folder_by_path_counts_as_demo():
    """Pointing at the package's demo folder must not write a manifest into the package."""
    assert resolve_weights(SHIPPED_DEMO, env={}).release == "demo"
    assert not (SHIPPED_DEMO / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# 4. Incomplete or damaged model folders and zips: one line, exit 78


def damage(folder: Path, how: str) -> Path:
    """Damage the step-2 model of `folder` as a user's copy could be; returns the file named."""
    trainer_dir = checkpoint_of(folder / STEP2).parent.parent
    target = {
        "plans.json missing": trainer_dir / "plans.json",
        "dataset.json missing": trainer_dir / "dataset.json",
        "checkpoint missing": trainer_dir / "fold_0" / "checkpoint_final.pth",
        "plans.json corrupt": trainer_dir / "plans.json",
        "dataset.json not an object": trainer_dir / "dataset.json",
    }[how]
    if how.endswith("missing"):
        target.unlink()
    elif how == "plans.json corrupt":
        target.write_text('{"configurations": ')
    else:
        target.write_text("[1, 2]")
    return target.parent if how == "checkpoint missing" else target


DAMAGES = [
    ("plans.json missing", "missing"),
    ("dataset.json missing", "missing"),
    ("checkpoint missing", "no checkpoint_best.pth or checkpoint_final.pth"),
    ("plans.json corrupt", "not readable JSON (Expecting value"),
    ("dataset.json not an object", "not a JSON object"),
]


@pytest.mark.parametrize("recorded", [False, True], ids=["no manifest", "installed"])
@pytest.mark.parametrize(("how", "problem"), DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_folder_is_one_line_exit_78(how, problem, recorded, demo_copy, capsys):
    if recorded:
        resolve_weights(demo_copy, env={})
    named = damage(demo_copy, how)
    with pytest.raises(WeightsError, match="^" + re.escape(f"{named}: {problem}")):
        resolve_weights(demo_copy, env={})
    assert main(["weights", "--verify", "--dest", str(demo_copy)]) == 78
    assert only_line(capsys.readouterr().err).startswith(f"spineseg: error: {named}: {problem}")


@pytest.mark.parametrize(("how", "problem"), DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_folder_is_not_installed(how, problem, demo_copy, tmp_path, capsys):
    named = damage(demo_copy, how)
    dest = tmp_path / "weights"
    assert main(["weights", "--from", str(demo_copy), "--dest", str(dest)]) == 78
    assert only_line(capsys.readouterr().err).startswith(f"spineseg: error: {named}: {problem}")
    assert not dest.exists()


def test_truncated_zip_exits_78_in_one_line(tiny_zip, tmp_path, capsys):
    bad = tmp_path / tiny_zip.name
    data = tiny_zip.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # an interrupted download
    dest = tmp_path / "weights"
    assert main(["weights", "--from", str(bad), "--dest", str(dest)]) == 78
    line = only_line(capsys.readouterr().err)
    assert line.startswith(f"spineseg: error: {bad}: corrupt or truncated zip")
    assert not dest.exists()


# ---------------------------------------------------------------------------------------------
# 5. The release recorded is what the sources and hashes prove


def test_demo_models_install_as_demo_never_as_an_official_release(tmp_path, capsys):
    dest = tmp_path / "weights"
    assert main(["weights", "--from", str(SHIPPED_DEMO), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("installed the demo models (release `demo`: synthetic phantoms only")
    assert f"in {dest / 'demo'}\n" in out
    assert "r2026" not in out and "r2025" not in out
    assert json.loads((dest / "demo" / "manifest.json").read_text())["release"] == "demo"

    ws = resolve_weights(dest, env={})
    assert ws.release == "demo" and ws.release_dir == dest / "demo"
    model = ModelInfo.from_weights(ws)
    assert model.release == "demo"
    generated_by = dataset_description(tmp_path / "out", tmp_path / "raw", model)["GeneratedBy"]
    assert generated_by[1]["Name"] == "TotalSpineSeg" and generated_by[1]["Version"] == "demo"

    assert main(["weights", "--verify", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.startswith("weights OK: the demo models (release `demo`")


def test_a_release_name_given_for_demo_models_names_the_folder_only(tmp_path, capsys):
    dest = tmp_path / "weights"
    args = ["weights", "--from", str(SHIPPED_DEMO), "--dest", str(dest), "--release", REL]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("installed the demo models")
    ws = resolve_weights(dest, env={})
    assert ws.release_dir == dest / REL and ws.release == "demo"
    assert ModelInfo.from_weights(ws).release == "demo"


def test_unknown_weights_install_as_unknown(tiny_zip, tiny_models, tmp_path, capsys):
    dest = tmp_path / "weights"
    assert main(["weights", "--from", str(tiny_zip), "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.startswith("installed weights of unknown origin")
    step2 = pack_release([tiny_models["step2"]], tmp_path / "zips2", REL)[0]
    assert main(["weights", "--from", str(step2), "--dest", str(dest)]) == 0
    ws = resolve_weights(dest, env={})
    assert ws.release == "unknown" and ws.release_dir == dest / "unknown" and ws.complete
    generated_by = dataset_description(
        tmp_path / "out", tmp_path / "raw", ModelInfo.from_weights(ws)
    )["GeneratedBy"]
    assert generated_by[1]["Version"] == "unknown"


def test_first_use_of_a_folder_of_unknown_models_is_unknown(tiny_models, tmp_path):
    folder = tmp_path / "r20260730"  # a folder name proves nothing
    for step in ("step1", "step2"):
        shutil.copytree(tiny_models[step], folder / tiny_models[step].name)
    assert resolve_weights(folder, env={}).release == "unknown"


def test_mixed_demo_and_unknown_datasets_are_unknown(demo_copy, tiny_models):
    shutil.rmtree(demo_copy / STEP2)
    shutil.copytree(tiny_models["step2"], demo_copy / STEP2)
    assert resolve_weights(demo_copy, env={}).release == "unknown"


@pytest.fixture
def official_server(tiny_models, tmp_path, monkeypatch):
    """The official URLs of REL served locally; returns the list of downloaded paths."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served" / REL
    pack_release([tiny_models["step1"], tiny_models["step2"]], served, REL)
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    handler = functools.partial(Handler, directory=str(served.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls = {REL: {name: f"{base}/{REL}/{name}_{REL}.zip" for name in (STEP1, STEP2)}}
    monkeypatch.setattr(releases, "RELEASES", urls)
    yield requested
    httpd.shutdown()
    httpd.server_close()


def test_download_from_the_official_urls_is_the_release(official_server, tmp_path, capsys):
    dest = tmp_path / "weights"
    assert main(["weights", "--dest", str(dest)]) == 0
    assert capsys.readouterr().out.startswith(f"installed TotalSpineSeg release {REL} in")
    ws = resolve_weights(dest, env={})
    assert ws.release == REL and ws.release_dir == dest / REL
    assert ModelInfo.from_weights(ws).release == REL


def test_official_download_replaces_other_weights_in_the_release_folder(official_server, tmp_path):
    dest = tmp_path / "weights"
    install_weights(dest, release=REL, source=SHIPPED_DEMO, progress=False)
    assert resolve_weights(dest, env={}).release == "demo"
    ws = install_weights(dest, progress=False)  # must not skip: these are not the download
    assert len(official_server) == 2
    assert ws.release == REL and resolve_weights(dest, env={}).release == REL
    install_weights(dest, progress=False)
    assert len(official_server) == 2  # now installed from these URLs: nothing downloaded again


# ---------------------------------------------------------------------------------------------
# 6. No network: nothing left behind, the same error twice, and what to do


def test_failed_download_leaves_no_folder_and_says_what_to_do(no_network, tmp_path):
    dest = tmp_path / "new" / "weights"
    messages = []
    for _ in range(2):
        with pytest.raises(WeightsError) as info:
            install_weights(dest, progress=False)
        messages.append(str(info.value))
        assert not (tmp_path / "new").exists()
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"http://127.0.0.1:9/{REL}/{STEP1}_{REL}.zip: download failed (")
    assert messages[0].endswith(WHAT_TO_DO)


def test_failed_download_leaves_an_existing_folder_as_it_was(no_network, demo_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError):
        install_weights(empty, progress=False)
    assert list(empty.iterdir()) == []

    before = sorted(p.relative_to(demo_copy) for p in demo_copy.rglob("*"))
    with pytest.raises(WeightsError):
        install_weights(demo_copy, progress=False)
    assert sorted(p.relative_to(demo_copy) for p in demo_copy.rglob("*")) == before


def test_weights_command_without_network_is_one_line_78(no_network, tmp_path, capsys):
    dest = tmp_path / "weights"
    for _ in range(2):
        assert main(["weights", "--dest", str(dest)]) == 78
        line = only_line(capsys.readouterr().err)
        assert "download failed" in line and line.endswith(WHAT_TO_DO)
        assert not dest.exists()


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsError) as info:
        resolve_weights(env={"XDG_DATA_HOME": str(tmp_path)})
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/spineseg/weights: weights folder not found; ")
    assert message.endswith(f"install them with `spineseg weights` or, {WHAT_TO_DO}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no TotalSpineSeg weights inside") as info:
        resolve_weights(tmp_path / "empty", env={})
    assert str(info.value).endswith(WHAT_TO_DO)


def test_failed_install_does_not_disturb_one_waiting_for_the_lock(
    no_network, tiny_zip, tmp_path, monkeypatch
):
    """A failed install removes the folder it created while another install waits on it."""
    import threading
    import time

    real_download = install._download

    def slow_download(*args, **kwargs):
        time.sleep(0.4)  # holds the lock while the other install starts waiting
        return real_download(*args, **kwargs)

    monkeypatch.setattr(install, "_download", slow_download)
    dest = tmp_path / "new" / "weights"
    outcome: dict[str, object] = {}

    def offline():
        try:
            install_weights(dest, progress=False)
        except WeightsError as e:
            outcome["offline"] = e

    thread = threading.Thread(target=offline)
    thread.start()
    time.sleep(0.15)
    ws = install_weights(dest, release=REL, source=tiny_zip, progress=False)
    thread.join()
    assert isinstance(outcome.get("offline"), WeightsError)
    assert ws.step1 == dest / REL / STEP1 and ws.step1.is_dir()
    manifest = json.loads((dest / REL / "manifest.json").read_text())
    assert manifest["datasets"][STEP1]["zip"]["sha256"] == w.sha256_file(tiny_zip)
