"""`easyedit-kne claims RESULTS_ROOT --out docs/claims.md`: the paper's analyses (§4.3-4.6), one line per
claim with its verdict, a table per sweep, the sequential-editing table, and one figure per sweep.

    easyedit-kne claims benchmarks/smollm2-135m/dev/claims --out docs/claims.md   # figures in docs/claims/

RESULTS_ROOT holds the sweeps' folders (p/, loc_size/, target_module/, batch/, sequential/) as written by
`easyedit-kne knowedit sweep=<name>`; a sweep with no results gives "not run" lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from easyedit_kne.stats import METRICS, format_ci

from .claims import MARGIN, RULES, SECTIONS, SWEEP_CLAIMS, ClaimLine, sequential_rows
from .claims_data import NOT_RUN, Level, level_cis, load_sweep

FIGURES = {"p": ("p", "p (% of neurons)", True), "loc_size": ("loc", "localization items", True),
           "batch": ("bs", "batch size", True)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _items(levels: list[Level]) -> str:
    data = levels[0].summary.get("data") or {}
    ids = sorted(set().union(*(lv.case_ids for lv in levels)))
    where = Path(str(data.get("path", "?"))).name
    span = f"[{ids[0]}, {ids[-1] + 1})" if ids else "-"
    return f"{data.get('type', '?')} dev items {span} of {where}"


def level_table(levels: list[Level]) -> list[str]:
    keys = list(levels[0].params)
    head = "| " + " | ".join(keys) + " | N | " + " | ".join(METRICS) + " | localization s | edit s/case | status |"
    lines = [head, "|" + "---|" * len(keys) + "---:|" + "---:|" * len(METRICS) + "---:|---:|---|"]
    for lv in levels:
        cis = level_cis(lv)
        t = lv.summary.get("timings") or {}
        loc = t.get("localization_s")
        per_case = t.get("edit_s_per_case")
        lines.append("| " + " | ".join(lv.params[k] for k in keys) + f" | {lv.n} | "
                     + " | ".join(format_ci(cis[m]) for m in METRICS)
                     + f" | {'-' if loc is None else f'{loc:.0f}'} | {'-' if per_case is None else f'{per_case:.1f}'}"
                     + f" | {'complete' if lv.summary.get('complete') else 'partial'} |")
    return lines


def _sort(levels: list[Level]) -> list[Level]:
    def key(lv):
        return tuple((0, float(v)) if re.fullmatch(r"-?[0-9.]+", v) else (1, v) for v in lv.params.values())

    return sorted(levels, key=key)


def _figure(sweep: str, group: str, levels: list[Level], fig_dir: Path) -> Path | None:
    from .claims_plots import line_figure, module_figure

    path = fig_dir / f"{sweep}-{_slug(group)}.png"
    title = f"{SECTIONS[sweep]}: {_items(levels)}"
    if sweep == "target_module":
        return module_figure(levels, path, title)
    key, xlabel, log_x = FIGURES[sweep]
    return line_figure(levels, key, xlabel, path, title, log_x=log_x, extra_timing=sweep == "loc_size")


def _seq_lines(rows: list[dict]) -> list[str]:
    lines = ["| data | method | T | N | Retention (earlier edits' Edit Succ.) | Edit Succ. (all T) | Locality | "
             "Fluency | Portability | status |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "n" not in r:
            lines.append(f"| {r['data']} | {r['method']} | {r['T']} | - | - | - | - | - | - | {NOT_RUN} |")
            continue
        lines.append(f"| {r['data']} | {r['method']} | {r['T']} | {r['n']} | {format_ci(r['Retention'])} | "
                     + " | ".join(format_ci(r[m]) for m in ("Edit Succ.", "Locality", "Fluency", "Portability"))
                     + f" | {r['status']} |")
    return lines


def build(root: str | Path, out: str | Path, fig_dir: str | Path | None = None, margin: float = MARGIN,
          figures: bool = True) -> tuple[str, list[ClaimLine]]:
    """Write the Markdown report (and figures); returns its text and the claim lines."""
    root, out = Path(root), Path(out)
    fig_dir = Path(fig_dir) if fig_dir is not None else out.with_suffix("")
    claim_lines: list[ClaimLine] = []
    sections: list[str] = []
    for sweep, fn in SWEEP_CLAIMS.items():
        groups = load_sweep(root, sweep)
        kwargs = {"margin": margin} if sweep == "loc_size" else {}
        body = [f"## {SECTIONS[sweep]} (`easyedit-kne knowedit sweep={sweep}`)", ""]
        if not groups:
            claim_lines += [ClaimLine(c.section, c.statement, f"no results under {root / sweep}", NOT_RUN)
                            for c in fn([], **kwargs)]
            sections += body + [f"Not run: no results under `{root / sweep}`.", ""]
            continue
        for group, levels in groups.items():
            levels = _sort(levels)
            partial = "" if all(lv.summary.get("complete") for lv in levels) else " (some runs still partial)"
            for c in fn(levels, **kwargs):
                measured = c.measured + (partial if c.verdict != NOT_RUN else "")
                claim_lines.append(ClaimLine(f"{c.section} [{group}]", c.statement, measured, c.verdict))
            body += [f"**{group}**: {_items(levels)}, N = {max(lv.n for lv in levels)} per run "
                     f"(`{os.path.relpath(levels[0].path.parent, out.parent)}`)", ""]
            body += level_table(levels) + [""]
            fig = _figure(sweep, group, levels, fig_dir) if figures else None
            if fig is not None:
                body += [f"![{sweep} {group}]({os.path.relpath(fig, out.parent)})", ""]
        sections += body
    seq = sequential_rows(load_sweep(root, "sequential"))
    seq_body = ["## Sequential editing, beyond the paper (`easyedit-kne knowedit sweep=sequential`)", "",
                "T edits applied one after another (batch size 1) without roll back, then every metric on the "
                "model carrying all T edits (the runner's sequential mode: pre-edit metrics of every item first, the "
                "T edits without roll back, then the post-edit metrics of every item). Retention = Edit Succ. "
                "of the T-1 earlier edits (edit order = item order), computed here from cases.jsonl. No paper "
                "claim: a comparison table only. Mean [95% bootstrap CI over items], x100.", ""]
    seq_body += _seq_lines(seq) + [""]
    if figures:
        from .claims_plots import sequential_figure

        fig = sequential_figure(seq, fig_dir / "sequential.png", "Sequential editing (dev split)")
        if fig is not None:
            seq_body += [f"![sequential]({os.path.relpath(fig, out.parent)})", ""]
    head = ["# The paper's analyses (§4.3-4.6) on the dev split: claims and verdicts", "",
            f"Generated by `easyedit-kne claims {root} --out {out}` (easyedit_kne/bench/claims_report.py); "
            "do not edit by hand. Items: the protocol's dev split only (docs/protocol.md); every sweep states "
            "its N. Metrics x100 as in the KnowEdit tables (Fluency: n-gram entropy x100).", "",
            "## Decision rule", "", RULES.format(margin=f"{margin:g}"), "",
            "## Claims", "", "| Claim | Paper's statement | Measured (paired, 95% bootstrap CI) | Verdict |",
            "|---|---|---|---|"]
    head += [f"| {c.section} | {c.statement} | {c.measured} | **{c.verdict}** |" for c in claim_lines]
    text = "\n".join(head + [""] + sections + seq_body)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text, claim_lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="easyedit-kne claims", description=__doc__.splitlines()[0])
    p.add_argument("root", help="the claims results folder, e.g. benchmarks/smollm2-135m/dev/claims")
    p.add_argument("--out", default="docs/claims.md", help="the Markdown report (default docs/claims.md)")
    p.add_argument("--figures", default=None, help="figure folder (default: --out without .md, docs/claims/)")
    p.add_argument("--margin", type=float, default=MARGIN, help="non-inferiority margin in points (x100)")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"{args.root}: no such folder (run a sweep first: easyedit-kne knowedit sweep=p)", file=sys.stderr)
        return 1
    _, lines = build(args.root, args.out, args.figures, args.margin, figures=not args.no_figures)
    counts = {v: sum(c.verdict == v for c in lines) for v in dict.fromkeys(c.verdict for c in lines)}
    print(f"wrote {args.out}: {len(lines)} claim lines ({', '.join(f'{n} {v}' for v, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
