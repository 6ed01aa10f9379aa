"""Where KNE's configurations land against the test-split targets, shown on dev: Portability against Locality.

The quality targets ask for Edit Succ. >= 99, Locality >= the reference method's (FT-M) and Portability >= the
reference's - 2, on the same items. This plot puts every KNE configuration tried on dev (a tuning study's
trials, or benchmark run folders) in one panel per dataset, with the reference run on the very same items and
the region that meets both targets shaded. A configuration inside the region meets them on these items; when
none is, the plot shows which target the trade-off gives up.

    python -m easyedit_kne.tuning.tradeoff --reference DEV/zsre/FT-M --reference DEV/counterfact/FT-M \\
        --study benchmarks/tuning/kne-smollm2-bands --out docs/kne-dev-tradeoff.png
    python -m easyedit_kne.tuning.tradeoff --reference CONFIRM/zsre/FT-M --run CONFIRM/zsre/KNE ...

Every point is computed on exactly the reference's items: a study trial must have been run on them, a run
folder must have finished them all (its other items are left out); anything else is refused or skipped with a
message, never averaged over other items.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PORT_MARGIN = 2.0  # Portability target: >= reference - 2
ES_MIN = 99.0


def _item_id(item: str) -> int:
    return int(str(item).rsplit("#", 1)[1])


def run_values(run_dir: str | Path) -> tuple[str, dict[str, dict[int, float]]]:
    """(dataset type, {metric: {case_id: value}}) of a run folder's finished cases."""
    from easyedit_kne.bench.claims_data import _records
    from easyedit_kne.stats import per_case_values

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return summary["data"]["type"], per_case_values(_records(run_dir))


def _mean_on(values: dict[str, dict[int, float]], items: set[int]) -> dict[str, float | None] | None:
    """Means over `items`; None if Edit Succ. is missing for one of them (the run did not finish them)."""
    if not items <= set(values.get("Edit Succ.", {})):
        return None
    out = {}
    for metric in ("Edit Succ.", "Portability", "Locality"):
        vals = [v for i, v in values.get(metric, {}).items() if i in items]
        out[metric] = sum(vals) / len(vals) if vals else None
    return out


def collect(references: list[str], studies: list[str], runs: list[str]) -> dict[str, dict]:
    """{dataset: {"items", "reference": {name, metrics}, "points": [{label, metrics}], "skipped": [...]}}."""
    panels: dict[str, dict] = {}
    for ref in references:
        data, values = run_values(ref)
        items = set(values.get("Edit Succ.", {}))
        panels[data] = {"items": items, "reference": {"name": Path(ref).name, **_mean_on(values, items)},
                        "points": [], "skipped": []}
    for study in studies:
        with open(os.path.join(study, "trials.jsonl"), encoding="utf-8") as f:
            trials = [json.loads(line) for line in f if line.strip()]
        for t in trials:
            if t.get("state") != "COMPLETE":
                continue
            for data, row in (t.get("table") or {}).items():
                if data not in panels:
                    continue
                label = f"{Path(study).name}#{t['number']}"
                ids = {_item_id(i) for i in t["dev_items"].get(data, [])}
                if ids != panels[data]["items"]:
                    panels[data]["skipped"].append(f"{label}: other items than the reference")
                    continue
                panels[data]["points"].append({"label": label, "Edit Succ.": row.get("Edit_Succ"),
                                               "Portability": row.get("Portability"), "Locality": row.get("Locality")})
    for run in runs:
        data, values = run_values(run)
        if data not in panels:
            raise SystemExit(f"{run}: dataset {data} has no --reference run; add one on the same items")
        metrics = _mean_on(values, panels[data]["items"])
        if metrics is None:
            panels[data]["skipped"].append(f"{Path(run).name}: has not finished every reference item")
            continue
        panels[data]["points"].append({"label": Path(run).name, **metrics})
    return panels


def in_target(point: dict, ref: dict) -> bool:
    return (point["Edit Succ."] >= ES_MIN and point["Locality"] >= ref["Locality"]
            and point["Portability"] >= ref["Portability"] - PORT_MARGIN)


def table(panels: dict[str, dict]) -> str:
    lines = ["| dataset | configuration | Edit Succ. | Portability | Locality | Port - ref | Loc - ref "
             "| both targets |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for data, panel in panels.items():
        ref = panel["reference"]
        lines.append(f"| {data} (N={len(panel['items'])}) | {ref['name']} (reference) | {ref['Edit Succ.']:.1f} | "
                     f"{ref['Portability']:.1f} | {ref['Locality']:.1f} | | | |")
        for p in panel["points"]:
            ok = "yes" if in_target(p, ref) else "no"
            lines.append(f"| {data} | {p['label']} | {p['Edit Succ.']:.1f} | {p['Portability']:.1f} | "
                         f"{p['Locality']:.1f} | {p['Portability'] - ref['Portability']:+.1f} | "
                         f"{p['Locality'] - ref['Locality']:+.1f} | {ok} |")
    return "\n".join(lines)


def plot(panels: dict[str, dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (data, panel) in zip(axes[0], panels.items(), strict=True):
        ref = panel["reference"]
        pts = panel["points"]
        xs = [p["Locality"] for p in pts] + [ref["Locality"]]
        ys = [p["Portability"] for p in pts] + [ref["Portability"]]
        x0, x1 = min(xs) - 3, max(xs) + 3
        y0, y1 = min(ys) - 4, max(ys) + 4
        ax.fill_between([ref["Locality"], x1], ref["Portability"] - PORT_MARGIN, y1, color="C2", alpha=0.12,
                        label="both targets met")
        for p in pts:
            ok = p["Edit Succ."] >= ES_MIN
            ax.scatter(p["Locality"], p["Portability"], s=30, color="C0" if ok else "none", edgecolors="C0")
            ax.annotate(p["label"], (p["Locality"], p["Portability"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
        ax.scatter(ref["Locality"], ref["Portability"], marker="*", s=140, color="C3", label=ref["name"])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"{data} (dev, N={len(panel['items'])})")
        ax.set_xlabel("Locality")
        ax.set_ylabel("Portability")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("filled: Edit Succ. >= 99; hollow: below", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", action="append", required=True,
                        help="the reference method's run folder, one per dataset (its items define the panel)")
    parser.add_argument("--study", action="append", default=[], help="a tuning output folder (trials.jsonl)")
    parser.add_argument("--run", action="append", default=[], help="a benchmark run folder (summary.json)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    panels = collect(args.reference, args.study, args.run)
    plot(panels, args.out)
    print(table(panels))
    for data, panel in panels.items():
        for why in panel["skipped"]:
            print(f"skipped ({data}): {why}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
