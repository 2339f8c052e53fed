"""The documentation says what the program does: version, exit codes, commands, citations.

The option reference itself is rendered from the parsers when `make docs` builds the site
(sphinx-argparse, warnings as errors in .ci/run); these tests guard what is written by hand
and would otherwise drift: a new exit code missing from the FAQ, a version bump not in
CHANGES.md or CITATION.cff, a subcommand without its Usage section, a README whose test
command is not the one CI runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from bids_app.cli import parser as cli_parser
from bids_app.plumbing.errors import EXIT_CODE_HELP, ExitCode

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
VERSION = (REPO / "version").read_text().strip()
PAGES = [
    "installation",
    "usage",
    "outputs",
    "qc",
    "corrections",
    "lesions",
    "scale",
    "method",
    "expect",
    "faq",
    "changes",
    "citing",
    "bids-conventions",
    "development",
]


def test_spineseg_version_matches_the_docs():
    out = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"spineseg {VERSION}"
    changes = (REPO / "CHANGES.md").read_text()
    assert re.search(rf"^## {re.escape(VERSION)}\b", changes, re.M), "CHANGES.md: no section"
    assert "../CHANGES.md" in (DOCS / "changes.md").read_text()
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert str(citation["version"]) == VERSION


def _faq_text() -> str:
    """The exit-code section of the FAQ."""
    text = (DOCS / "faq.md").read_text()
    return text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]


def _faq_codes() -> list[int]:
    section = _faq_text()
    return [int(c) for c in re.findall(r"^\| (\d+) \|", section, re.M)]


def test_faq_explains_every_exit_code_once():
    codes = _faq_codes()
    assert sorted(codes) == sorted(int(c) for c in ExitCode), "docs/faq.md vs ExitCode"
    assert len(codes) == len(set(codes))


def test_help_lists_every_exit_code():
    listed = {int(c) for c in re.findall(r"^  (\d+)\s", EXIT_CODE_HELP, re.M)}
    assert listed == {int(c) for c in ExitCode}


def test_every_page_exists_and_is_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert re.search(rf"^{re.escape(page)}$", index, re.M), f"{page} not in index toctree"


def test_usage_renders_every_parser():
    usage = (DOCS / "usage.md").read_text()
    rendered = set(re.findall(r"^:func: (\w+)$", usage, re.M))
    expected = {"bids_app_parser"} | {f"{name}_parser" for name in cli_parser.SUBCOMMANDS}
    assert rendered == expected
    for func in expected:
        assert callable(getattr(cli_parser, func)), func


def test_readme_is_a_short_front_door_with_the_ci_test_command():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 180
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run no longer calls make test"
    assert re.search(r"^make test\b", readme, re.M)
    for page in ("installation", "usage", "outputs", "faq", "scale"):
        assert f"docs/{page}.md" in readme, page
    assert re.search(r"^make docs$", ci, re.M), ".ci/run does not build the docs"


def test_citation_names_the_works_to_cite_and_agrees_with_the_docs():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["title"].startswith("SpineSeg")
    dois = {ref["title"].split(":")[0]: ref["doi"] for ref in citation["references"]}
    assert set(dois) == {"TotalSpineSeg", "nnU-Net", "SCIseg"}
    citing = (DOCS / "citing.md").read_text()
    for name, doi in dois.items():
        assert f"doi:{doi}" in citing, f"{name}: {doi} not in docs/citing.md"


def test_make_demo_installs_only_the_runtime_package():
    # -W pyproject.toml: as if it had changed, so the install step is printed, not skipped.
    out = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in out.splitlines() if " -e " in line]
    assert installs, out
    assert all('-e "."' in line for line in installs), installs


def test_weight_urls_are_not_project_urls():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert ".zip" not in pyproject


def test_group_qc_sidecar_describes_every_column():
    # docs/outputs.md renders this sidecar as the column reference of group_qc.tsv.
    from bids_app.qc import group
    from bids_app.qc.thresholds import Thresholds

    described = set(group.qc_sidecar(Thresholds()))
    assert set(group.QC_COLUMNS) <= described, set(group.QC_COLUMNS) - described


def test_code_map_matches_the_package_layout():
    """docs/development.md names every package and run/ module, and only paths that exist."""
    text = (DOCS / "development.md").read_text()
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([^`]+)`", section, re.M))
    gone = [path for path in named if not (REPO / path.rstrip("/")).exists()]
    assert not gone, f"code map names paths that do not exist: {gone}"
    pkg = REPO / "bids_app"
    wanted = {f"bids_app/{d.name}/" for d in pkg.iterdir() if (d / "__init__.py").is_file()}
    wanted -= {"bids_app/run/"}  # listed module by module below
    wanted |= {f"bids_app/run/{m.name}" for m in (pkg / "run").glob("*.py")}
    wanted |= {f"bids_app/run/{d.name}/" for d in (pkg / "run").iterdir() if d.is_dir()}
    wanted -= {"bids_app/run/__init__.py", "bids_app/run/__pycache__/"}
    missing = sorted(wanted - named)
    assert not missing, f"docs/development.md code map lacks {missing}"


def test_unusable_device_exit_code_is_the_one_help_and_faq_give(tmp_path):
    """The issue users met: `--help` put an unusable --device under exit 1, the docs under 64."""
    ds = tmp_path / "ds"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.1"}')
    argv = [str(ds), str(tmp_path / "out"), "participant", "--device", "cuda:99"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *argv, "--skip-bids-validation"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    help_lines = re.split(r"\n  (?=\d)", EXIT_CODE_HELP)
    device_lines = [line for line in help_lines if "--device" in line]
    assert [line.split()[0] for line in device_lines] == [str(int(ExitCode.USAGE))]
    faq = {code: row for code, row in re.findall(r"^\| (\d+) \|(.*)$", _faq_text(), re.M)}
    assert "--device" in faq[str(int(ExitCode.USAGE))]
    assert "--device" not in faq[str(int(ExitCode.FAILED))]


def test_versions_quoted_in_the_docs_are_the_current_one():
    # Image tags and SIF names in the examples (spineseg:0.1.0, spineseg-0.1.0.sif) and
    # the version printed in example outputs follow the `version` file.
    files = [REPO / "README.md", REPO / "descriptors" / "README.md", *DOCS.glob("*.md")]
    quoted = re.compile(r"(?:spineseg[:-]|SpineSeg )(\d+\.\d+\.\d+)")
    stale = sorted(
        {f"{path.name}: {m}" for path in files for m in quoted.findall(path.read_text())}
        - {f"{path.name}: {VERSION}" for path in files}
    )
    assert not stale, stale


def _names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", s, maxsplit=1)[0].lower() for s in specs}


def test_readme_says_why_each_dependency_is_there():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= _names(extra)
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Dependencies and why", 1)[1].split("\n## ", 1)[0].lower()
    named = {
        n for row in re.findall(r"^\| ([^|]+)\|", table, re.M) for n in re.findall(r"[\w.-]+", row)
    }
    assert not wanted - named, f"README dependency table lacks {sorted(wanted - named)}"
