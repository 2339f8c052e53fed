"""The Boutiques descriptors and the command line cannot drift apart, in either direction.

A CBRAIN or `bosh` user sees only the descriptor: an option the CLI gained but the descriptor
lacks is invisible to them, and a descriptor input whose type, choices or list-ness differ
from the option builds command lines the app refuses (or silently narrows what it accepts:
`--device` as an auto/cuda/cpu enum hid `cuda:1`). So:

- every option of the BIDS-App parser that a level uses is an input of that level's
  descriptor, or is on OMITTED with the reason it is left out;
- every descriptor input maps to a real option, and the argv bosh builds from it (a sample
  value of its type, two values for a list) is accepted by the real parser and sets that
  option.

When an option is missing, the failure prints a descriptor input generated from the parser,
ready to paste into the descriptor (then add its value-key to "command-line").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from boutiques.bosh import bosh

from bids_app.cli.parser import bids_app_parser

REPO = Path(__file__).resolve().parents[2]
DESCRIPTORS = {
    "participant": REPO / "descriptors" / "spineseg_participant.json",
    "group": REPO / "descriptors" / "spineseg_group.json",
}
# Argument groups of the parser whose options the group level reads; every other optional
# option is a participant-level one.
GROUP_LEVEL_GROUPS = {"group level"}
# Options both levels read (selection filters and logging).
SHARED = {"participant_label", "session_label", "verbose"}
# Options deliberately not in a descriptor, by argument group title or dest, with the reason.
OMITTED_GROUPS = {
    "SLURM": "writes SLURM array scripts instead of running; a CBRAIN or bosh task is already "
    "one cluster job, and its tasks' own option (--frozen-selection) is internal",
}
OMITTED = {
    "help": "prints the help",
    "version": "prints the version; the descriptor's tool-version says it",
    "notrack": "accepted for compatibility with other BIDS Apps; does nothing",
    "dry_run": "prints a plan and writes nothing: no use as a task whose output is a folder",
}


def _load(level: str) -> dict:
    return json.loads(DESCRIPTORS[level].read_text())


def _parser() -> argparse.ArgumentParser:
    return bids_app_parser()


def _group_titles(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> title of the argument group that holds the option."""
    return {
        action.dest: group.title or ""
        for group in parser._action_groups
        for action in group._group_actions
    }


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


def _level_of(action: argparse.Action, titles: dict[str, str]) -> set[str]:
    if action.dest in SHARED:
        return {"participant", "group"}
    return {"group"} if titles.get(action.dest) in GROUP_LEVEL_GROUPS else {"participant"}


def _omission(action: argparse.Action, titles: dict[str, str]) -> str | None:
    return OMITTED.get(action.dest) or OMITTED_GROUPS.get(titles.get(action.dest, ""))


def _repeat_flag(inp: dict) -> str | None:
    """An input without a flag whose choices are a count option repeated (`-v`, `-vv`)."""
    choices = inp.get("value-choices") or []
    if inp.get("command-line-flag") or not choices:
        return None
    first = re.fullmatch(r"-(\w)\1*", str(choices[0]))
    if first and all(re.fullmatch(rf"-{first[1]}+", str(c)) for c in choices):
        return f"-{first[1]}"
    return None


def _action_for(inp: dict, parser: argparse.ArgumentParser) -> argparse.Action | None:
    flag = inp.get("command-line-flag") or _repeat_flag(inp)
    if not flag:
        return None
    by_flag = {s: a for a in _options(parser) for s in a.option_strings}
    return by_flag.get(flag.split()[0])


def _is_flag_action(action: argparse.Action) -> bool:
    return action.nargs == 0


def _is_list_action(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)


def _suggested_input(action: argparse.Action) -> str:
    """A descriptor input generated from the parser's option, for the failure message."""
    flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    entry: dict = {
        "id": action.dest,
        "name": action.dest.replace("_", " ").capitalize(),
        "description": (action.help or "").replace("%%", "%"),
        "value-key": f"[{action.dest.upper()}]",
        "command-line-flag": flag,
        "optional": True,
    }
    if _is_flag_action(action):
        entry["type"] = "Flag"
    elif action.choices:
        entry["type"] = "String"
        entry["value-choices"] = list(action.choices)
    elif action.type is int or getattr(action.type, "__name__", "") == "positive_int":
        entry.update(type="Number", integer=True, minimum=1)
    else:
        entry["type"] = "String"
    if _is_list_action(action):
        entry["list"] = True
    return json.dumps(entry, indent=2)


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_every_cli_option_of_the_level_is_in_its_descriptor(level):
    parser = _parser()
    titles = _group_titles(parser)
    covered = {
        action.dest
        for inp in _load(level)["inputs"]
        if (action := _action_for(inp, parser)) is not None
    }
    missing = [
        action
        for action in _options(parser)
        if level in _level_of(action, titles)
        and action.dest not in covered
        and not _omission(action, titles)
    ]
    assert not missing, (
        f"{DESCRIPTORS[level].name} lacks the CLI option(s) "
        f"{', '.join(a.option_strings[0] for a in missing)}: add an input for each (below, "
        "generated from the parser; add its value-key to command-line) or list it in OMITTED "
        "of this test with the reason\n" + "\n".join(_suggested_input(a) for a in missing)
    )


def test_omissions_name_real_options():
    # A stale omission would hide a future option of the same name without a reason.
    parser = _parser()
    titles = _group_titles(parser)
    dests = {a.dest for a in _options(parser)}
    assert set(OMITTED) <= dests, set(OMITTED) - dests
    assert set(OMITTED_GROUPS) <= set(titles.values()), set(OMITTED_GROUPS) - set(titles.values())


# Free-text options whose CLI type accepts a closed set of names: their value-choices list
# them (each is parsed below). Any other option without CLI choices must not get
# value-choices: they would hide values the CLI accepts (--device cuda:1).
CLOSED_BY_TYPE = {"assume_top_disc": "disc names only (C2-C3 ... L5-S)"}
INTEGER_TYPES = ("positive_int", "non_negative_int")  # the CLI's integer parsers
# Sample values for free String inputs whose CLI option checks its value (else "01").
STRING_SAMPLES = {"device": "cuda:0,cuda:1", "localizer": '{"suffix": "T1w"}'}


def _sample(inp: dict, tmp: Path) -> list[str]:
    """Values bosh would put after the flag: a sample of the input's type (two for a list)."""
    kind = inp["type"]
    if kind == "Flag":
        return []
    if inp.get("value-choices"):
        values = [str(inp["value-choices"][-1])]
    elif kind == "Number":
        bound = inp.get("maximum", inp.get("minimum", 1))  # the minimum may be the default
        values = [str(int(bound) if inp.get("integer") else bound)]
    elif kind == "File":
        values = [str(tmp)]
    else:
        values = [STRING_SAMPLES.get(inp["id"], "01")]
    return values * 2 if inp.get("list") else values


def _inputs(level: str) -> list[dict]:
    positional = {"bids_dir", "output_dir_name", "participant_level_analysis_dir"}
    return [i for i in _load(level)["inputs"] if i["id"] not in positional | {"analysis_level"}]


@pytest.mark.parametrize(
    "level,inp",
    [(level, inp) for level in sorted(DESCRIPTORS) for inp in _inputs(level)],
    ids=lambda x: x["id"] if isinstance(x, dict) else x,
)
def test_descriptor_input_is_a_real_option_with_the_same_shape(level, inp, tmp_path):
    parser = _parser()
    action = _action_for(inp, parser)
    assert action is not None, f"{inp['id']}: no CLI option {inp.get('command-line-flag')!r}"
    fixed_value = (inp.get("command-line-flag") or "").split()[1:]
    if inp["type"] == "Flag":
        assert _is_flag_action(action) or fixed_value, f"{inp['id']}: the option takes a value"
    elif not _repeat_flag(inp):
        assert not _is_flag_action(action), f"{inp['id']}: the option takes no value"
    assert bool(inp.get("list")) == _is_list_action(action), f"{inp['id']}: list-ness differs"
    if action.choices and inp["type"] != "Flag":
        assert set(map(str, inp.get("value-choices", []))) == set(map(str, action.choices)), (
            f"{inp['id']}: value-choices differ from the CLI's {list(action.choices)}"
        )
    if inp.get("value-choices") and not action.choices and not _repeat_flag(inp):
        assert inp["id"] in CLOSED_BY_TYPE, (
            f"{inp['id']}: value-choices {inp['value-choices']} narrow an option the CLI takes "
            "free text for; drop them"
        )
    if inp["type"] == "Number":
        integer = action.type is int or getattr(action.type, "__name__", "") in INTEGER_TYPES
        assert bool(inp.get("integer")) == integer, f"{inp['id']}: integer-ness differs"
    # The argv bosh builds for this input (each choice, when there are choices) parses, and
    # one of them sets the option (a choice may be the default).
    flag = inp.get("command-line-flag")
    samples = (
        [[str(c)] for c in inp["value-choices"]]
        if inp.get("value-choices") and not inp.get("list")
        else [_sample(inp, tmp_path)]
    )
    default = parser.parse_args(["bids", "out", level]).__dict__[action.dest]
    values_set = []
    for values in samples:
        argv = (flag.split() if flag else []) + values
        parsed = parser.parse_args(["bids", "out", level, *argv])
        values_set.append(parsed.__dict__[action.dest])
    assert any(v != default for v in values_set) or fixed_value, (
        f"{inp['id']}: no sample value sets {action.dest}"
    )


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_number_limits_are_the_clis(level, tmp_path):
    """A Number's minimum/maximum are accepted by the CLI, and one step beyond is refused."""
    parser = _parser()
    for inp in _inputs(level):
        if inp["type"] != "Number":
            continue
        action = _action_for(inp, parser)
        assert action is not None and action.type is not None, inp["id"]
        step = 1 if inp.get("integer") else 0.01
        for key, sign in (("minimum", -1), ("maximum", 1)):
            if key not in inp:
                continue
            action.type(str(inp[key]))
            beyond = inp[key] + sign * step
            with pytest.raises((argparse.ArgumentTypeError, ValueError)):
                action.type(str(beyond))


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_repeatable_options_can_be_repeated(level):
    """A counted option (-v, -vv) is an input whose choices repeat it, not a one-off Flag."""
    parser = _parser()
    for inp in _inputs(level):
        action = _action_for(inp, parser)
        if isinstance(action, argparse._CountAction):
            choices = inp.get("value-choices") or []
            assert _repeat_flag(inp) and len(choices) >= 2, (
                f"{inp['id']}: {action.option_strings[0]} can be repeated; give it as a String "
                f'without flag, value-choices ["-v", "-vv"]'
            )


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_literal_values_of_an_option_can_be_given(level):
    """A value the CLI names in the metavar (`DIR|none`) can be chosen in the descriptor:
    the input is a String, or a Flag input passes `--option literal`."""
    parser = _parser()
    inputs = _inputs(level)
    for inp in inputs:
        action = _action_for(inp, parser)
        if action is None or not isinstance(action.metavar, str) or inp["type"] == "String":
            continue
        literals = [w for w in action.metavar.split("|") if re.fullmatch(r"[a-z]+", w)]
        flags = {i.get("command-line-flag") for i in inputs}
        for word in literals:
            assert any(f"{opt} {word}" in flags for opt in action.option_strings), (
                f"{inp['id']} is a {inp['type']}, so '{action.option_strings[0]} {word}' "
                "cannot be given: add a Flag input with that command-line-flag"
            )


@pytest.mark.parametrize("level", sorted(DESCRIPTORS))
def test_the_command_bosh_builds_from_every_input_parses(level, tmp_path):
    """One invocation setting every input (those another input disables left out): the
    command `bosh exec simulate` prints is accepted by the real parser."""
    inputs = _inputs(level)
    disabled = {d for i in inputs for d in i.get("disables-inputs", [])}
    invocation: dict[str, object] = {
        "bids_dir": "ds",
        "output_dir_name": "out",
        "analysis_level": level,
    }
    for inp in inputs:
        if inp["id"] in disabled:
            continue
        values = _sample(inp, tmp_path)
        if inp["type"] == "Flag":
            invocation[inp["id"]] = True
        elif inp.get("list"):
            invocation[inp["id"]] = values
        else:
            value: object = values[0]
            if inp["type"] == "Number":
                value = int(values[0]) if inp.get("integer") else float(values[0])
            invocation[inp["id"]] = value
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    with contextlib.redirect_stdout(io.StringIO()):
        out = bosh(["exec", "simulate", str(DESCRIPTORS[level]), "-i", str(path)])
    command = out.shell_command.split("; ", 1)[1]
    argv = shlex.split(command)
    assert argv[0] == "spineseg"
    parsed = _parser().parse_args(argv[1:])
    assert parsed.analysis_level == level
