"""Boutiques descriptors: valid for bosh and CBRAIN, and in step with the app they launch.

What a CBRAIN integrator or a `bosh exec launch` user relies on: the descriptors validate
(also as BIDS Apps), each example invocation is accepted, the command bosh builds is the one
descriptors/README.md documents, and version, image tag and exit codes agree with the code
(the inputs against the CLI, both ways: test_descriptor_cli.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from boutiques.bosh import bosh

REPO = Path(__file__).resolve().parents[2]
DESC_DIR = REPO / "descriptors"
DESCRIPTORS = {
    "participant": DESC_DIR / "spineseg_participant.json",
    "group": DESC_DIR / "spineseg_group.json",
}
INVOCATIONS = sorted((DESC_DIR / "invocations").glob("*.json"))
# `<!-- simulate: DESCRIPTOR INVOCATION -->` followed by a fenced block with the command.
DOCUMENTED = re.compile(r"<!-- simulate: (\S+) (\S+) -->\s*```\w*\n(.*?)\n```", re.S)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _bosh(*args: str | Path):
    """Run a bosh subcommand quietly; bosh raises on invalid input."""
    with contextlib.redirect_stdout(io.StringIO()):
        return bosh([str(a) for a in args])


def _descriptor_for(invocation: Path) -> Path:
    return DESCRIPTORS[_load(invocation)["analysis_level"]]


def _documented() -> dict[tuple[str, str], str]:
    text = (DESC_DIR / "README.md").read_text()
    return {(d, i): cmd.strip() for d, i, cmd in DOCUMENTED.findall(text)}


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_descriptor_is_valid_boutiques_and_bids_app(level):
    _bosh("validate", DESCRIPTORS[level])
    _bosh("validate", "--bids", DESCRIPTORS[level])


def test_bids_validation_rejects_a_broken_descriptor(tmp_path):
    # Guards the test above: --bids must really check the BIDS-App shape.
    desc = _load(DESCRIPTORS["participant"])
    # A level outside participant/session/group: valid Boutiques, not a BIDS App.
    level = next(i for i in desc["inputs"] if i["id"] == "analysis_level")
    level["value-choices"].append("subject")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(desc))
    _bosh("validate", broken)
    with pytest.raises(Exception, match="not a valid analysis level"):
        _bosh("validate", "--bids", broken)


def test_every_analysis_level_has_an_example_invocation():
    levels = {_load(inv)["analysis_level"] for inv in INVOCATIONS}
    assert levels == set(DESCRIPTORS)


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=lambda p: p.stem)
def test_example_invocation_is_accepted(invocation):
    _bosh("invocation", _descriptor_for(invocation), "-i", invocation)


def test_invocation_for_the_wrong_level_is_rejected():
    with pytest.raises(Exception, match="is not one of"):
        _bosh("invocation", DESCRIPTORS["group"], "-i", DESC_DIR / "invocations/participant.json")


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=lambda p: p.stem)
def test_simulated_command_is_the_documented_one(invocation):
    desc = _descriptor_for(invocation)
    key = (desc.name, f"invocations/{invocation.name}")
    documented = _documented()
    assert key in documented, f"descriptors/README.md documents no command for {key}"
    out = _bosh("exec", "simulate", desc, "-i", invocation)
    assert out.shell_command == documented[key]


def test_cbrain_needs_bids_dir_as_the_only_mandatory_file():
    # CBRAIN makes one task per selected subject only when a single mandatory File exists.
    desc = _load(DESCRIPTORS["participant"])
    mandatory = [i["id"] for i in desc["inputs"] if i["type"] == "File" and not i.get("optional")]
    assert mandatory == ["bids_dir"]
    modules = desc["custom"]["cbrain:integrator_modules"]
    maker = modules["BoutiquesBidsSingleSubjectMaker"]
    assert maker["dataset_input_id"] == "bids_dir"
    assert maker["subjects_input_id"] == "participant_label"
    assert modules["BoutiquesOutputFileTypeSetter"] == {"output_dir": "BidsAppOutput"}
    assert desc["custom"]["cbrain:readonly-input-files"] is True


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_bids_app_input_ids(level):
    ids = {i["id"] for i in _load(DESCRIPTORS[level])["inputs"]}
    assert {"bids_dir", "output_dir_name", "analysis_level", "participant_label"} <= ids
    assert "session_label" in ids
    outputs = _load(DESCRIPTORS[level])["output-files"]
    assert [(o["id"], o["path-template"]) for o in outputs] == [("output_dir", "[OUTPUT_DIR]")]


def test_inputs_shared_by_both_levels_are_identical():
    part = {i["id"]: i for i in _load(DESCRIPTORS["participant"])["inputs"]}
    group = {i["id"]: i for i in _load(DESCRIPTORS["group"])["inputs"]}
    same = set(part) & set(group) - {"analysis_level", "bids_dir", "output_dir_name"}
    same -= {"participant_level_analysis_dir", "participant_label", "session_label"}
    assert same, "the two descriptors share no plain option"
    for key in same:
        assert part[key] == group[key], key


# name:tag, optionally pinned to the published build by its digest (docs/scale.md,
# "Publishing the CUDA image").
IMAGE_REF = re.compile(r"(?P<name>[a-z0-9./_-]+):(?P<tag>[\w.-]+)(@sha256:[0-9a-f]{64})?")


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_version_and_image_tag_match_the_version_file(level):
    version = (REPO / "version").read_text().strip()
    desc = _load(DESCRIPTORS[level])
    assert desc["tool-version"] == version
    ref = IMAGE_REF.fullmatch(desc["container-image"]["image"])
    assert ref, desc["container-image"]["image"]
    assert ref["tag"] == version


def test_both_levels_run_the_same_image():
    images = {_load(path)["container-image"]["image"] for path in DESCRIPTORS.values()}
    assert len(images) == 1, images


def test_value_keys_are_bracketed_and_unique():
    for desc_path in DESCRIPTORS.values():
        keys = [i["value-key"] for i in _load(desc_path)["inputs"]]
        assert all(re.fullmatch(r"\[[A-Z0-9_]+\]", k) for k in keys), desc_path.name
        assert len(set(keys)) == len(keys) - 1  # output_dir_name/participant_level_analysis_dir


def test_error_codes_are_the_apps_exit_codes():
    from bids_app.plumbing.errors import ExitCode

    app_codes = {int(c) for c in ExitCode if c != ExitCode.OK}
    part = {e["code"] for e in _load(DESCRIPTORS["participant"])["error-codes"]}
    group = {e["code"] for e in _load(DESCRIPTORS["group"])["error-codes"]}
    assert part == app_codes
    assert group <= app_codes
