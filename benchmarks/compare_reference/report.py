"""The Markdown report written from the JSON results."""

from __future__ import annotations

import os
from pathlib import Path

from .config import LABEL_KINDS, TOOLS


def _agree(cmp: dict, kind: str) -> str:
    """`agree % (n differing voxels)` for labels, `same / total` positions for levels."""
    d = cmp.get(kind, {})
    if "missing" in d or "error" in d:
        return _cell(d, "")
    if kind == "levels":
        return f"{d['same_position']} / {d['n_levels']}"
    return f"{d['agreement_pct']} % ({d['n_diff']})"


def summary_lines(report: dict) -> list[str]:
    """One row per case: agreement with the reference and each tool's cost; batch ratios."""
    tools = report["meta"]["tools"]
    head = "| case | grid | loc | pair | final | step-1 | levels same | " + " | ".join(
        f"{t} wall s / RSS / PSS MiB" for t in tools
    )
    lines = [
        "## Summary",
        "",
        "Agreement = % of voxels with the same label (number of differing voxels) on the "
        "native grid; levels = markers at the same voxel / levels found by either tool. "
        "`failed` = the tool wrote no final labels.",
        "",
        head + " |",
        "|" + "---|" * (7 + len(tools)),
    ]
    for case in report["cases"]:
        grid = "x".join(str(v) for v in case.get("zooms", [])) + f" {case.get('axcodes', '')}"
        pairs = case["compare"] or {"–": {}}
        costs = []
        for t in tools:
            r = case["runs"].get(t)
            costs.append(
                "–"
                if r is None
                else f"{r['wall_s']:.0f} / {r['peak_rss_mib']:,.0f} / {r['peak_pss_mib']:,.0f}"
                + ("" if r["ok"] else " failed")
            )
        for pair, cmp in pairs.items():
            cells = [_agree(cmp, k) if cmp else "–" for k in ("final", "step1", "levels")]
            lines.append(
                f"| {case['name']} | {grid} | {'yes' if case.get('localizer') else 'no'} | "
                f"{pair} | " + " | ".join(cells + costs) + " |"
            )
    b = report.get("batch")
    if b and b["runs"]:
        base = "ref" if "ref" in b["runs"] else "ref-preload"
        lines += [
            "",
            f"Batch of {b['n']} (`{b['specs'][0]}` …, seeds {b['specs'][0].split(':')[1]}+): "
            + "; ".join(
                f"{t} {r['wall_s']:.0f} s, {r['peak_rss_mib']:,.0f} MiB RSS, "
                f"{r['peak_pss_mib']:,.0f} MiB PSS{'' if r['ok'] else ' (FAILED)'}"
                for t, r in b["runs"].items()
            )
            + ".",
        ]
        ours, ref = b["runs"].get("spineseg"), b["runs"].get(base)
        if ours and ref:
            lines.append(
                f"SpineSeg / {base}: wall {ours['wall_s'] / ref['wall_s']:.2f}, "
                f"peak RSS {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f}, "
                f"peak PSS {ours['peak_pss_mib'] / ref['peak_pss_mib']:.2f}."
            )
    return [*lines, ""]


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.1f}{unit}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# SpineSeg vs the reference tool (totalspineseg 20260807)",
        "",
        f"Run {meta['date']} on {meta['machine']}; device {meta['device']}, SpineSeg threads "
        f"{meta['threads']}; weights `{meta['weights']}`; step-1 only: {meta['step1_only']}.",
        "Reference runs: `ref` = CLI with `--no-stalling`; `ref-preload` = same with torch and "
        "nnU-Net preloaded into its forkserver. Memory = peak of the sum over the whole process "
        "tree, polled every 0.2 s.",
        "",
        *summary_lines(report),
        "## Cost per image",
        "",
        "| case | tool | ok | wall (s) | peak RSS (MiB) | peak PSS (MiB) | processes | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for tool, r in case["runs"].items():
            errs = "; ".join(r["errors"])[:120].replace("|", "/")
            lines.append(
                f"| {case['name']} | {tool} | {'yes' if r['ok'] else 'no'} | "
                f"{_fmt(r['wall_s'])} | {_fmt(r['peak_rss_mib'])} | "
                f"{_fmt(r['peak_pss_mib'])} | {r['max_processes']} | {errs} |"
            )
    lines += [
        "",
        "## Agreement with the reference (voxel by voxel, native grid)",
        "",
        "| case | pair | final agree % | final mean Dice | step-1 agree % | "
        "step-1 mean Dice | levels same / total | cord max diff | canal max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for pair, cmp in case["compare"].items():
            f, s, lv = cmp.get("final", {}), cmp.get("step1", {}), cmp.get("levels", {})
            cells = [
                _cell(f, "agreement_pct"),
                _cell(f, "mean_dice"),
                _cell(s, "agreement_pct"),
                _cell(s, "mean_dice"),
                f"{lv['same_position']} / {lv['n_levels']}" if "n_levels" in lv else _cell(lv, ""),
                _cell(cmp.get("cord_soft", {}), "max_abs_diff"),
                _cell(cmp.get("canal_soft", {}), "max_abs_diff"),
            ]
            lines.append(f"| {case['name']} | {pair} | " + " | ".join(cells) + " |")
    diffs = [
        f"- {case['name']}, {pair}, {kind}: {d['n_diff']} voxels differ; most: "
        + ", ".join(f"{t['ref']}→{t['ours']} ×{t['voxels']}" for t in d["top_diffs"][:5])
        for case in report["cases"]
        for pair, cmp in case["compare"].items()
        for kind in LABEL_KINDS
        if (d := cmp.get(kind, {})).get("n_diff")
    ]
    if diffs:
        lines += ["", "Differing voxels (reference label → other label × count):", "", *diffs]
    truths = [(c["name"], c["truth"]) for c in report["cases"] if c.get("truth")]
    if truths:
        lines += [
            "",
            "## Phantoms: final labels vs exact truth (mean Dice over truth labels)",
            "",
            "| case | " + " | ".join(TOOLS) + " |",
            "|---|" + "---|" * len(TOOLS),
        ]
        for name, t in truths:
            vals = [(t.get(tool) or {}).get("mean_dice_over_truth_labels") for tool in TOOLS]
            lines.append(
                f"| {name} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in vals) + " |"
            )
    if report.get("batch"):
        b = report["batch"]
        lines += [
            "",
            f"## Batch: {b['n']} phantoms in one call per tool",
            "",
            "| tool | ok | wall (s) | s / image | peak RSS (MiB) | peak PSS (MiB) | processes |",
            "|---|---|---|---|---|---|---|",
        ]
        for tool, r in b["runs"].items():
            lines.append(
                f"| {tool} | {'yes' if r['ok'] else 'no'} | {_fmt(r['wall_s'])} | "
                f"{_fmt(r['wall_s'] / b['n'])} | {_fmt(r['peak_rss_mib'])} | "
                f"{_fmt(r['peak_pss_mib'])} | {r['max_processes']} |"
            )
    if report.get("notes"):
        lines += ["", report["notes"].rstrip()]
    lines.append("")
    return "\n".join(lines)


def _cell(d: dict, key: str) -> str:
    if "error" in d:
        return "grid differs"
    if "missing" in d:
        return "missing: " + ", ".join(d["missing"])
    v = d.get(key)
    return "–" if v is None else str(v)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
