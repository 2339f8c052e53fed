"""Manual ratings: the report's offline form, the saved file, and the group-level merge."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from qc_browser import find_chromium, open_page, page_url
from test_qc_report import assert_self_contained, links

from bids_app import __version__
from bids_app.cli.app import Paths, build_config
from bids_app.cli.parser import bids_app_parser
from bids_app.plumbing.errors import ExitCode
from bids_app.qc import run_group
from bids_app.qc.ratings import SCHEMA, read_ratings, read_ratings_file
from bids_app.run.group import run_group as run_group_level

CHROMIUM = find_chromium()


def _qc(out) -> dict[str, dict[str, str]]:
    with open(out / "group_qc.tsv", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f, delimiter="\t")}


def _doc(ratings: list[dict], date: str = "2026-12-01T10:00:00.000Z") -> str:
    return json.dumps({"schema": SCHEMA, "subject": "01", "date": date, "ratings": ratings})


def test_report_has_a_rating_form_per_image_and_one_inline_script(derivatives):
    page = derivatives.out / "sub-01.html"
    html = page.read_text()
    assert html.count('<fieldset class="rating"') == 3  # cervical, lumbar, failed
    for problem in ("wrong levels", "missed structure", "leak", "artefact", "poor image"):
        assert problem in html
    assert links(page).scripts == 1
    assert_self_contained(page)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_rate_save_and_merge_in_chromium(derivatives, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cervical, lumbar = derivatives.keys["cervical"], derivatives.keys["lumbar"]
    with open_page(CHROMIUM, page_url(out / "sub-01.html"), downloads) as page:
        page.evaluate(
            f"""(() => {{
            const box = k => document.querySelector(`fieldset[data-image="${{k}}"]`);
            box("{cervical}").querySelector('input[value="doubtful"]').click();
            box("{cervical}").querySelector('input[value="leak"]').click();
            box("{cervical}").querySelector('input[value="artefact"]').click();
            box("{cervical}").querySelector("textarea").value = "canal leaks\\tat C5\\nsee T1";
            box("{lumbar}").querySelector('input[value="bad"]').click();
            document.getElementById("save-ratings").click();
            }})()"""
        )
        saved, name = page.wait_download(downloads)
        status = page.evaluate('document.getElementById("ratings-status").textContent')
        load = page.load_report()
    assert load.errors == []
    assert all(u.startswith(("file:", "data:", "blob:")) for u in load.requests), load.requests
    assert name == "sub-01_ratings.json" and "Saved 2 image rating(s)" in str(status)

    doc = json.loads(saved.read_text())
    assert doc["schema"] == SCHEMA and doc["subject"] == "01"
    assert doc["app_version"] == __version__ and doc["date"].startswith("20")
    by_image = {r["image"]: r for r in doc["ratings"]}
    assert set(by_image) == {cervical, lumbar}  # the unrated failed image is left out
    assert by_image[cervical]["rating"] == "doubtful"
    assert by_image[cervical]["problems"] == ["leak", "artefact"]
    assert by_image[cervical]["source"].endswith(f"{cervical}.nii.gz")
    assert len(read_ratings_file(saved)) == 2

    (out / "ratings").mkdir()
    shutil.copy(saved, out / "ratings" / name)
    run_group(out)
    qc = _qc(out)
    assert qc[cervical]["qc_rating"] == "doubtful"
    assert qc[cervical]["qc_problems"] == "leak,artefact"
    assert qc[cervical]["qc_comment"] == "canal leaks at C5 see T1"
    assert qc[lumbar]["qc_rating"] == "bad" and qc[lumbar]["qc_problems"] == "n/a"
    assert qc[derivatives.keys["sag3"]]["qc_rating"] == "n/a"
    html = (out / "group.html").read_text()
    assert '<span class="rated-doubtful">doubtful</span>: leak,artefact' in html


def test_group_reads_a_given_folder_and_keeps_the_latest_rating(derivatives, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    key = derivatives.keys["sag3"]
    folder = tmp_path / "my ratings"
    folder.mkdir()
    (folder / "sub-02_ratings.json").write_text(_doc([{"image": key, "rating": "bad"}]))
    later = _doc([{"image": key, "rating": "good"}], date="2026-12-02T08:00:00.000Z")
    (folder / "sub-02_ratings (1).json").write_text(later)
    run_group(out, ratings_dir=folder)
    assert _qc(out)[key]["qc_rating"] == "good"
    run_group(out)  # default folder output_dir/ratings: absent, nothing rated
    assert _qc(out)[key]["qc_rating"] == "n/a"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not readable as JSON"),
        (json.dumps({"ratings": []}), "not a SpineSeg ratings file"),
        (_doc([{"image": "x", "rating": "great"}]), "rating 'great' is not one of good"),
        (_doc([{"image": "x", "problems": ["blur"]}]), "problems must be a list of"),
        (_doc([{"rating": "good"}]), "each rating needs an 'image' key"),
    ],
)
def test_bad_ratings_file_is_skipped_with_its_reason(tmp_path, caplog, text, reason):
    (tmp_path / "bad.json").write_text(text)
    (tmp_path / "good.json").write_text(_doc([{"image": "sub-01_T2w", "rating": "good"}]))
    ratings = read_ratings(tmp_path)
    assert set(ratings) == {"sub-01_T2w"}
    assert any("bad.json: ratings ignored: " in m and reason in m for m in caplog.messages)


def test_ratings_dir_option_reaches_the_group_level(derivatives, tmp_path):
    """`--ratings-dir` on the command line -> RunConfig -> the group tables."""
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    (out / "dataset_description.json").write_text("{}")
    folder = tmp_path / "rated"
    folder.mkdir()
    key = derivatives.keys["sag3"]
    (folder / "sub-02_ratings.json").write_text(_doc([{"image": key, "rating": "doubtful"}]))
    args = bids_app_parser().parse_args(
        [str(derivatives.bids), str(out), "group", "--ratings-dir", str(folder)]
    )
    config = build_config(args, Paths(derivatives.bids, out, None))
    assert config.ratings_dir == folder
    assert run_group_level(config) == 0
    assert _qc(out)[key]["qc_rating"] == "doubtful"


def test_missing_ratings_dir_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bids_app_parser().parse_args(
            [str(tmp_path), str(tmp_path / "out"), "group", "--ratings-dir", str(tmp_path / "no")]
        )
    assert exit_info.value.code == ExitCode.USAGE
    assert "is not a folder" in capsys.readouterr().err
