"""Manual QC ratings: what the subject report's form saves, and how the group level reads it.

The report is a static file opened from a cluster or a copied folder, with no server to
post to, so its inline script downloads one JSON file per subject (`sub-<label>_ratings.json`,
schema `SCHEMA`). The group level reads every such file in a folder and merges the ratings
into group_qc.tsv by image key; a file that is not a ratings file is logged and skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = "spineseg-ratings/1"
RATINGS: dict[str, str] = {
    "good": "segmentation usable as it is",
    "doubtful": "usable with care, or to be edited",
    "bad": "not usable",
}
PROBLEMS: dict[str, str] = {
    "wrong_levels": "wrong levels",
    "missed_structure": "missed structure",
    "leak": "leak",
    "artefact": "artefact",
    "poor_image": "poor image",
}
RATINGS_DIR = "ratings"  # default folder in output_dir


@dataclass(frozen=True)
class Rating:
    """One image's manual rating, as saved by the report."""

    image: str
    rating: str | None
    problems: tuple[str, ...]
    comment: str
    date: str
    file: Path

    def columns(self) -> dict[str, str | None]:
        """The group_qc.tsv cells: tabs and line breaks of the comment become spaces."""
        return {
            "qc_rating": self.rating,
            "qc_problems": ",".join(self.problems) or None,
            "qc_comment": " ".join(self.comment.split()) or None,
        }


def _entry(item: object, date: str, path: Path) -> Rating:
    """One entry of a ratings file; ValueError saying what is wrong."""
    if not isinstance(item, Mapping) or not isinstance(item.get("image"), str):
        raise ValueError("each rating needs an 'image' key")
    rating = item.get("rating")
    if rating is not None and rating not in RATINGS:
        raise ValueError(f"{item['image']}: rating {rating!r} is not one of {', '.join(RATINGS)}")
    problems = item.get("problems") or []
    if not isinstance(problems, list) or any(p not in PROBLEMS for p in problems):
        raise ValueError(f"{item['image']}: problems must be a list of {', '.join(PROBLEMS)}")
    comment = item.get("comment") or ""
    if not isinstance(comment, str):
        raise ValueError(f"{item['image']}: comment must be text")
    return Rating(item["image"], rating, tuple(problems), comment, date, path)


def read_ratings_file(path: Path) -> list[Rating]:
    """Ratings of one file; ValueError naming the problem (not JSON, wrong schema, bad entry)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable as JSON ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f'not a SpineSeg ratings file (no "schema": "{SCHEMA}")')
    items = data.get("ratings")
    if not isinstance(items, list):
        raise ValueError("'ratings' must be a list")
    return [_entry(item, str(data.get("date") or ""), path) for item in items]


def read_ratings(folder: Path) -> dict[str, Rating]:
    """Image key -> its latest rating over every JSON file in `folder` (missing: none).

    The same image rated in several files (a second download, two raters) keeps the rating
    with the latest `date`; a bad file is logged with its reason and skipped whole.
    """
    out: dict[str, Rating] = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            ratings = read_ratings_file(path)
        except ValueError as e:
            log.warning("%s: ratings ignored: %s", path, e)
            continue
        for r in ratings:
            if r.image not in out or r.date >= out[r.image].date:
                out[r.image] = r
    return out
