"""compare's statistics: every metric with its 95% bootstrap CI over items, and each method paired with KNE
on the same items (mean difference, its CI, and the verdict), from the runs' cases.jsonl (easyedit_kne.stats)."""

from __future__ import annotations

from easyedit_kne.stats import METRICS, bootstrap_ci, format_ci, paired_difference, per_case_values

DATASET_NAMES = {"zsre": "ZsRE", "counterfact": "WikiData_counterfact", "recent": "WikiData_recent",
                 "wikibio": "WikiBio"}
REFERENCE = "KNE"


def attach_case_values(runs: list[dict]) -> None:
    """r["values"] = {metric: {case_id: value}} over the run's finished cases (the --common ones if set)."""
    from .compare import _case_records

    for r in runs:
        try:
            records = _case_records(r)
        except FileNotFoundError:
            r["values"] = None
            continue
        ids = r.get("common_ids")
        if ids is not None:
            records = {c: records[c] for c in ids}
        r["values"] = per_case_values(records)


def _dataset(r: dict) -> str:
    return str((r["summary"].get("data") or {}).get("type") or "?")


def ci_rows(runs: list[dict], order) -> list[dict]:
    """One row per run: label, dataset, n and {metric: bootstrap CI dict}."""
    rows = []
    for r in sorted(runs, key=lambda r: (order(r["label"]), _dataset(r))):
        if r.get("values") is None:
            continue
        rows.append({"label": r["label"], "dataset": _dataset(r),
                     "ci": {m: bootstrap_ci(list(r["values"][m].values())) for m in METRICS}})
    return rows


def paired_rows(runs: list[dict], order, reference: str = REFERENCE) -> list[dict]:
    """Per dataset, every other row label against the reference method's run: {metric: paired difference}."""
    rows = []
    by_data: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("values") is not None:
            by_data.setdefault(_dataset(r), []).append(r)
    for dataset, members in by_data.items():
        refs = [r for r in members if r["label"] == reference]
        if len(refs) != 1:
            continue  # no (unambiguous) reference run on this dataset
        ref = refs[0]
        for r in sorted(members, key=lambda r: order(r["label"])):
            if r is ref:
                continue
            rows.append({"label": r["label"], "dataset": dataset,
                         "diff": {m: paired_difference(r["values"][m], ref["values"][m]) for m in METRICS}})
    return rows


def stats_text(runs: list[dict], order, digits: int = 1, reference: str = REFERENCE) -> str:
    """Markdown: the CI table and the paired comparisons (empty when no run has its cases.jsonl)."""
    cis = ci_rows(runs, order)
    if not cis:
        return ""
    lines = ["", "Mean [95% bootstrap CI over items] (x100); n = items with the metric", "",
             "| Method | Dataset | n | " + " | ".join(METRICS) + " |", "|---|---|---:|" + "---:|" * len(METRICS)]
    for row in cis:
        n = max(row["ci"][m]["n"] for m in METRICS)
        lines.append(f"| {row['label']} | {DATASET_NAMES.get(row['dataset'], row['dataset'])} | {n} | "
                     + " | ".join(format_ci(row["ci"][m], digits) for m in METRICS) + " |")
    pairs = paired_rows(runs, order, reference)
    if pairs:
        lines += ["", f"Paired with {reference} on the same items: mean difference (method - {reference}) "
                      "[95% bootstrap CI], items, verdict (the CI excludes 0 or not)", "",
                  "| Method | Dataset | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for row in pairs:
            cells = [paired_cell(row["diff"][m], digits) for m in METRICS]
            lines.append(f"| {row['label']} | {DATASET_NAMES.get(row['dataset'], row['dataset'])} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_cell(d: dict, digits: int = 1) -> str:
    """One paired difference as a table cell: "mean [lo, hi] (n=N; higher|lower|no difference shown)"."""
    if not d["n"]:
        return "-"
    verdict = {"a > b": "higher", "a < b": "lower"}.get(d["verdict"], "no difference shown")
    return f"{format_ci(d, digits)} (n={d['n']}; {verdict})"
