"""Subject reports: content, self-containment, a real browser, and --reports-only rebuilds."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from qc_browser import find_chromium, load_page, page_url

from bids_app.qc import rebuild_reports, write_subject_report
from bids_app.qc.records import read_tsv

CHROMIUM = find_chromium()


class Links(HTMLParser):
    """Every URL-bearing attribute, the scripts and the ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.scripts = 0
        self.script_sources: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.scripts += tag == "script"
        if tag == "script" and a.get("src"):
            self.script_sources.append(a["src"])
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append((tag, a[key]))


def links(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text())
    return parser


def assert_self_contained(page: Path) -> None:
    """Inline scripts only, no external URL; every relative link is an existing file or id."""
    found = links(page)
    assert found.script_sources == [], f"{page.name}: script loaded from a file or the network"
    for tag, url in found.urls:
        assert not url.startswith(("http:", "https:", "//")), f"{page.name}: network URL {url}"
        if url.startswith("data:"):
            continue
        target, _, anchor = url.partition("#")
        if target:
            assert (page.parent / target).is_file(), f"{page.name}: <{tag}> {url} missing"
        elif anchor:
            assert anchor in found.ids, f"{page.name}: anchor #{anchor} missing"


def test_subject_report_content(derivatives):
    page = derivatives.out / "sub-01.html"
    html = page.read_text()
    found = links(page)
    for name in ("cervical", "lumbar", "failed"):
        assert derivatives.keys[name] in found.ids
    assert "image is 2-D" in html  # the failed image and its reason
    assert "Failed images" in html
    assert "r20260730" in html and "cpu" in html and "step1 12.5 s" in html  # provenance
    assert "Disc height (mm)" in html and "T12-L1" in html  # measurements of the lumbar image
    assert "not validated" in html
    imgs = [u for t, u in found.urls if t == "img"]
    # sagittal and axial for each of the two segmented images, and the curvature figure of
    # the one with a measured angle (the lumbar image; the cervical endplates of this small
    # phantom are too small for its 1 mm voxels)
    assert len(imgs) == 5
    assert sum(u.endswith("_curvature.png") for u in imgs) == 1
    assert_self_contained(page)
    assert "sub-02" not in html  # only this subject's images


def test_report_lists_flags(derivatives):
    html = (derivatives.out / "sub-02.html").read_text()
    assert "thick_slices" in html  # sag3 phantom: 3 mm slices
    assert "No flag raised." in (derivatives.out / "sub-01.html").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("subject", ["01", "02"])
def test_report_loads_in_chromium(derivatives, subject):
    load = load_page(CHROMIUM, page_url(derivatives.out / f"sub-{subject}.html"))
    assert load.title == f"SpineSeg: sub-{subject}"
    assert load.errors == []
    assert load.images and all(i["complete"] and i["naturalWidth"] > 0 for i in load.images)
    assert all(u.startswith(("file:", "data:")) for u in load.requests), load.requests


def test_report_of_unknown_subject_says_so(derivatives, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    page = write_subject_report(out, "sub-77")
    assert page.name == "sub-77.html"
    assert "No image of this subject was found" in page.read_text()


def test_rebuild_reports_from_outputs(derivatives, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(derivatives.out, out)
    key = derivatives.keys["cervical"]
    qc_path = next(out.glob(f"sub-01/ses-01/anat/{key[:-4]}*_qc.json"))
    before = read_tsv(next(out.glob("sub-01/ses-01/anat/*_morphometry.tsv")))
    figures = sorted((out / "sub-01/figures").glob("*ses-01*.png"))
    for f in [qc_path, *figures, out / "sub-01.html"]:
        f.unlink()

    pages = rebuild_reports(out, derivatives.bids, participants=["sub-01"], sessions=["01"])
    assert pages == [out / "sub-01.html"]
    assert qc_path.is_file() and all(f.is_file() for f in figures)
    assert read_tsv(next(out.glob("sub-01/ses-01/anat/*_morphometry.tsv"))) == before
    assert_self_contained(out / "sub-01.html")

    # Without the raw data, figures are kept as they are and the QC record says why.
    mtimes = [f.stat().st_mtime_ns for f in figures]
    rebuild_reports(out, None, participants=["01"], sessions=["01"])
    assert [f.stat().st_mtime_ns for f in figures] == mtimes
    qc = json.loads(qc_path.read_text())
    assert "not redrawn" in qc["previews_note"]
    assert qc["figures"]["sagittal"] and qc["flags"] == []


def test_sagittal_caption_explains_tags_and_dots(derivatives):
    html = (derivatives.out / "sub-01.html").read_text()
    assert "White dots: level markers" in html and "discs on the left" in html
