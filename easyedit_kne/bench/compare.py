"""Compare KnowEdit runs: a Markdown table like the KNE paper's Table 1, a CSV and a bar chart.

    python scripts/compare.py RESULTS_DIR [RESULTS_DIR ...] [--out-prefix PREFIX]

Reads every summary.json under the given folders (recursively; as written by scripts/run_knowedit.py) and
prints to stdout a Markdown table with one row per method and, per dataset (ZsRE, WikiData_counterfact,
WikiData_recent, WikiBio), the columns Edit Succ., Portability, Locality, Fluency (x100, as in the KnowEdit
tables; "-" where a run has no such number), then a table of case counts and timings. Writes
PREFIX.md (the same text), PREFIX.csv (one row per run) and PREFIX.png (one bar chart per metric; needs
matplotlib). PREFIX defaults to <first RESULTS_DIR>/comparison.

Rows are labelled by method (plus the model when several models occur); runs that would share a row and a
dataset are told apart by their folder relative to the RESULTS_DIR, e.g. a sweep's "method.hparams.p=0.5".
Runs still in progress (summary.json with complete: false) are marked with "*".

Then (unless --no-stats) every metric with its 95% bootstrap CI over items and, per dataset, each method
paired with KNE (--reference) on the items both finished: the mean difference with its CI and whether the CI
excludes 0 (compare_stats.py, easyedit_kne.stats; needs scipy and each run's cases.jsonl).

--common compares like with like: for each dataset (the same data file), every run's numbers are recomputed
from its cases.jsonl over the case ids that all of that dataset's runs finished without error (a 100-case
KNE run next to a 20-case baseline is then scored on those 20). The case-count table says how many.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

DATASETS = {"zsre": "ZsRE", "counterfact": "WikiData_counterfact", "recent": "WikiData_recent", "wikibio": "WikiBio"}
METRICS = ("Edit Succ.", "Portability", "Locality", "Fluency")
EXTRA = ("Exact Match", "Rephrase")
METHOD_ORDER = ("FT-L", "FT-M", "LoRA", "AdaLoRA", "ROME", "MEMIT", "FiNE-paper", "FiNE", "KNE-paper", "KNE")
CSV_FIELDS = ("label", "method", "model", "dataset", "edit_mode", "batch_size", "n_cases", "n_expected", "complete",
              *METRICS, *EXTRA, "localization_s", "edit_s", "evaluation_s", "edit_s_per_case", "path")


def find_summaries(roots: list[str]) -> list[dict]:
    """Every run under `roots`: {"summary", "path", "rel", "config" (its run_config.json's, {} if none)}."""
    from .shards import read_run_config

    runs = []
    for root in roots:
        root_path = Path(root)
        if root_path.is_file() and root_path.name == "summary.json":
            files, base = [root_path], root_path.parent.parent
        elif root_path.is_dir():
            files, base = sorted(root_path.rglob("summary.json")), root_path
        else:
            raise FileNotFoundError(f"{root}: no such folder")
        for f in files:
            try:
                with open(f, encoding="utf-8") as fh:
                    s = json.load(fh)
            except (OSError, ValueError) as err:
                print(f"warning: skipping {f}: {err}", file=sys.stderr)
                continue
            if not isinstance(s, dict) or "method" not in s or "data" not in s:
                print(f"warning: skipping {f}: not a run_knowedit.py summary", file=sys.stderr)
                continue
            rel = os.path.relpath(f.parent, base)
            runs.append({"summary": s, "path": str(f.parent), "rel": "" if rel == "." else rel,
                         "config": read_run_config(f.parent)})
    return runs


def _case_records(run: dict) -> dict[int, dict]:
    """Finished, error-free cases of a run: {case_id: record} from the cases.jsonl beside its summary."""
    from .case_log import CASES, parse_case_lines  # the runner's own reading of its case log (read only)

    if "cases" in run:  # the shards of a run, merged (shards.py)
        return {cid: rec for cid, rec in run["cases"].items() if "error" not in rec}
    path = Path(run["path"]) / CASES
    if not path.exists():
        raise FileNotFoundError(f"{path}: --common needs the cases.jsonl beside summary.json")
    records, _, _ = parse_case_lines(path.read_bytes(), path)
    return {cid: rec for cid, rec in records.items() if "error" not in rec}


def restrict_to_common(runs: list[dict]) -> None:
    """Recompute every run's table numbers over the cases shared by all runs of its dataset (in place)."""
    from easyedit_kne.evaluate import summarize, table_numbers

    groups: dict = {}
    for r in runs:
        data = r["summary"].get("data") or {}
        groups.setdefault((_dataset(r["summary"]), data.get("path")), []).append(r)
    for (dataset, path), members in groups.items():
        records = [_case_records(r) for r in members]
        common = sorted(set.intersection(*(set(rec) for rec in records)))
        if not common:
            raise ValueError(f"--common: the runs on {dataset} ({path}) share no finished case")
        for r, rec in zip(members, records, strict=True):
            cases = [{"pre": rec[c]["pre"], "post": rec[c]["post"]} for c in common]
            s = dict(r["summary"], **table_numbers(summarize(cases)))
            timings = dict(s.get("timings") or {})
            for key, field in (("edit_s_per_case", "edit_s"), ("evaluation_s_per_case", "eval_s")):
                timings[key] = sum(rec[c]["timing"][field] for c in common) / len(common)
            s.update(n_cases=len(common), n_expected=len(common), complete=True, timings=timings,
                     n_cases_in_run=len(rec))
            r["summary"] = s
            r["common_ids"] = common


def _dataset(s: dict) -> str:
    return str((s.get("data") or {}).get("type") or "?")


def _method_name(run: dict) -> str:
    """The method config's name (KNE-paper, FiNE-paper): run_config.json's (read once by find_summaries), which
    runs written before the summary carried it (their summary says KNE / FiNE) have too; else the summary's."""
    return str((run.get("config") or {}).get("method") or run["summary"]["method"])


def label_runs(runs: list[dict]) -> None:
    models = {r["summary"].get("model") for r in runs}
    for r in runs:
        s = r["summary"]
        r["label"] = _method_name(r) + (f" [{s.get('model')}]" if len(models) > 1 else "")
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["label"], _dataset(r["summary"])), []).append(r)
    for members in groups.values():
        if len(members) > 1:
            for r in members:
                r["label"] += f" ({r['rel'] or r['path']})"


def _order(label: str) -> tuple:
    head = label.split(" ")[0]
    return (METHOD_ORDER.index(head) if head in METHOD_ORDER else len(METHOD_ORDER), label)


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cases(s: dict) -> str:
    if "n_cases_in_run" in s:
        return f"{s.get('n_cases')} common ({s['n_cases_in_run']} in the run)"
    return f"{s.get('n_cases')}/{s.get('n_expected')}"


def tables(runs: list[dict], digits: int = 2) -> str:
    datasets = [d for d in DATASETS if any(_dataset(r["summary"]) == d for r in runs)]
    datasets += sorted({_dataset(r["summary"]) for r in runs} - set(datasets))
    labels = sorted({r["label"] for r in runs}, key=_order)
    cell = {(r["label"], _dataset(r["summary"])): r for r in runs}
    head = ["Method"] + [f"{DATASETS.get(d, d)} {m}" for d in datasets for m in METRICS]
    lines = ["Column groups (datasets): " + " | ".join(DATASETS.get(d, d) for d in datasets)
             + "; metrics x100 (Fluency: n-gram entropy x100); * = run not complete"
             + ("; every run scored on the cases all runs of its dataset finished (--common)"
                if any("n_cases_in_run" in r["summary"] for r in runs) else ""), "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label in labels:
        row = [label]
        for d in datasets:
            r = cell.get((label, d))
            for m in METRICS:
                if r is None:
                    row.append("")
                    continue
                text = _fmt(r["summary"].get(m), digits)
                if not r["summary"].get("complete", True) and m == METRICS[0]:
                    text += "*"
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| Method | Dataset | cases | Exact Match | edit mode | localization s | edit s/case | "
              "evaluation s/case |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for label in labels:
        for d in datasets:
            r = cell.get((label, d))
            if r is None:
                continue
            s, t = r["summary"], r["summary"].get("timings") or {}
            lines.append(
                f"| {label} | {DATASETS.get(d, d)} | {_cases(s)} | "
                f"{_fmt(s.get('Exact Match'), digits)} | {s.get('edit_mode')} bs {s.get('batch_size')} | "
                f"{_fmt(t.get('localization_s'), 1)} | {_fmt(t.get('edit_s_per_case'), 2)} | "
                f"{_fmt(t.get('evaluation_s_per_case'), 2)} |")
    return "\n".join(lines) + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in sorted(runs, key=lambda r: (_order(r["label"]), _dataset(r["summary"]))):
            s, t = r["summary"], r["summary"].get("timings") or {}
            row = {"label": r["label"], "method": s.get("method"), "model": s.get("model"), "dataset": _dataset(s),
                   "edit_mode": s.get("edit_mode"), "batch_size": s.get("batch_size"), "n_cases": s.get("n_cases"),
                   "n_expected": s.get("n_expected"), "complete": s.get("complete"), "path": r["path"]}
            row.update({m: s.get(m) for m in (*METRICS, *EXTRA)})
            row.update({k: t.get(k) for k in ("localization_s", "edit_s", "evaluation_s", "edit_s_per_case")})
            w.writerow(row)


def plot(runs: list[dict], path: Path) -> bool:
    """One panel per metric: datasets on the x axis, one bar per row label. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed; no PNG written (pip install matplotlib)", file=sys.stderr)
        return False
    datasets = [d for d in DATASETS if any(_dataset(r["summary"]) == d for r in runs)]
    datasets += sorted({_dataset(r["summary"]) for r in runs} - set(datasets))
    labels = sorted({r["label"] for r in runs}, key=_order)
    cell = {(r["label"], _dataset(r["summary"])): r["summary"] for r in runs}
    width = 0.8 / max(1, len(labels))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS) + 0.3 * len(labels), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for ax, metric in zip(axes[0], METRICS, strict=True):
        for j, label in enumerate(labels):
            xs, ys = [], []
            for i, d in enumerate(datasets):
                v = (cell.get((label, d)) or {}).get(metric)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(v)
            ax.bar(xs, ys, width=width, label=label, color=cmap(j % cmap.N))
        ax.set_title(metric)
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels([DATASETS.get(d, d).replace("WikiData_", "Wiki ") for d in datasets], rotation=15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("score (x100)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(labels), 8), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 8), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="folders searched recursively for summary.json")
    p.add_argument("--out-prefix", default=None, help="writes PREFIX.md, PREFIX.csv, PREFIX.png "
                                                      "(default: <first RESULTS_DIR>/comparison)")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--no-stats", action="store_true", help="skip the bootstrap CIs and paired comparisons")
    p.add_argument("--reference", default="KNE", help="the method every other one is paired with (default KNE)")
    p.add_argument("--common", action="store_true",
                   help="score every run of a dataset on the cases all of them finished (from cases.jsonl)")
    p.add_argument("--markdown", default=None, help="write the generated results page here (docs_table.py) "
                                                    "from the committed runs, and nothing else")
    p.add_argument("--readme", default=None, help="with --markdown: also regenerate this README's table block")
    args = p.parse_args(argv)
    if args.markdown:
        from .docs_table import generate

        generate(args.results, args.markdown, args.readme)
        print(f"wrote {args.markdown}" + (f" and the table of {args.readme}" if args.readme else ""), file=sys.stderr)
        return 0
    from .shards import merge_shard_runs

    runs = merge_shard_runs(find_summaries(args.results))  # data.shard=K/N runs: one run per shard-K-of-N set
    if not runs:
        print(f"no summary.json under {', '.join(args.results)}", file=sys.stderr)
        return 1
    if args.common:
        restrict_to_common(runs)
    label_runs(runs)
    text = tables(runs, args.digits)
    if not args.no_stats:
        from .compare_stats import attach_case_values, stats_text

        attach_case_values(runs)
        text += stats_text(runs, _order, reference=args.reference)
    sys.stdout.write(text)
    prefix = Path(args.out_prefix) if args.out_prefix else Path(args.results[0]) / "comparison"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text(text, encoding="utf-8")
    write_csv(runs, Path(f"{prefix}.csv"))
    made = plot(runs, Path(f"{prefix}.png"))
    if made and not args.no_stats:
        from .plots import bar_charts, scatters

        figures = bar_charts(runs, prefix, _order) + scatters(runs, prefix)
        if figures:
            print(f"wrote {len(figures)} figures: {prefix}-bars-<dataset>.png, {prefix}-scatter-<method>.png",
                  file=sys.stderr)
    print(f"\nwrote {prefix}.md, {prefix}.csv" + (f", {prefix}.png" if made else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
