"""Sphinx directive `spineseg-columns NAME`: the columns of an output table, from the code.

The column descriptions are the ones the app writes into each table's JSON sidecar, so the
Outputs page cannot describe a column the code no longer writes, nor miss a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from docutils import nodes
from docutils.parsers.rst import Directive


def _from_pairs(columns: Mapping[str, tuple[str, str | None]]) -> dict[str, dict]:
    return {
        name: {"Description": d, **({"Units": u} if u else {})} for name, (d, u) in columns.items()
    }


def _morphometry() -> Mapping[str, Mapping]:
    from bids_app.qc import measures

    return measures.sidecar()


def _group_qc() -> Mapping[str, Mapping]:
    from bids_app.lesions import qc as lesion_qc
    from bids_app.qc import group
    from bids_app.qc.thresholds import Thresholds
    from bids_app.vertebrae import qc as vertebra_qc

    columns = {k: v for k, v in group.qc_sidecar(Thresholds()).items() if k != "Thresholds"}
    # Always in group_qc.tsv, n/a for an image without that capability's outputs.
    for extra in (lesion_qc.COLUMNS, vertebra_qc.COLUMNS):
        for name, description in extra.items():
            columns.setdefault(name, {"Description": description})
    return columns


def _group_long() -> Mapping[str, Mapping]:
    from bids_app.qc import group

    return group.long_sidecar()


def _lesions() -> Mapping[str, Mapping]:
    from bids_app.lesions import measures

    return _from_pairs(measures.COLUMNS)


def _lesion_levels() -> Mapping[str, Mapping]:
    from bids_app.lesions import measures

    return _from_pairs(measures.LOAD_COLUMNS)


def _vertebrae() -> Mapping[str, Mapping]:
    from bids_app.vertebrae import outputs

    return outputs.columns_sidecar()


TABLES: dict[str, Callable[[], Mapping[str, Mapping]]] = {
    "morphometry": _morphometry,
    "group_qc": _group_qc,
    "group_long": _group_long,
    "lesions": _lesions,
    "lesion_levels": _lesion_levels,
    "vertebrae": _vertebrae,
}


def _describe(meta: Mapping) -> str:
    text = str(meta.get("Description", ""))
    levels = meta.get("Levels")
    if isinstance(levels, Mapping) and levels:
        text += " Values: " + "; ".join(f"{k}: {v}" for k, v in levels.items())
    return text


class ColumnsDirective(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in TABLES:
            raise self.error(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        columns = TABLES[name]()
        table = nodes.table()
        group = nodes.tgroup(cols=3)
        table += group
        for width in (25, 10, 65):
            group += nodes.colspec(colwidth=width)
        head, body = nodes.thead(), nodes.tbody()
        group += head
        group += body
        rows = [("column", "units", "description")]
        rows += [
            (col, str(meta.get("Units", "")), _describe(meta)) for col, meta in columns.items()
        ]
        for i, cells in enumerate(rows):
            row = nodes.row()
            for j, text in enumerate(cells):
                para = nodes.paragraph()
                para += nodes.literal(text=text) if (j == 0 and i) else nodes.Text(text)
                row += nodes.entry("", para)
            (head if i == 0 else body).append(row)
        return [table]


def setup(app):
    app.add_directive("spineseg-columns", ColumnsDirective)
    return {"parallel_read_safe": True, "version": "1"}
