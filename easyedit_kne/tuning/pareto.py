"""Pareto plots of a tuning study: Edit Succ. against Locality, one panel per option.

Reads a study's trials.jsonl (every COMPLETE trial's config and per-dataset KnowEdit numbers on the dev
split) and, for each option of the search space (e.g. kl_subject_weight, nullspace, stop_on, init), draws
every trial as a point (mean Edit Succ. over the study's datasets against mean Locality), coloured by the
option's value, with the Pareto front of each value. A value whose front lies up and to the right of another's
moves KNE past the trade-off rather than along it.

    python -m easyedit_kne.tuning.pareto STUDY_DIR [--out FILE.png] [--options a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_OPTIONS = ("kl_prompt_weight", "kl_subject_weight", "nullspace", "stop_on", "init", "optimizer", "target")


def load_points(trials_jsonl: str) -> list[dict]:
    """[{"params": ..., "es": mean Edit_Succ, "loc": mean Locality, "port": mean Portability}] of COMPLETE trials."""
    points = []
    with open(trials_jsonl, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if rec.get("state") != "COMPLETE":
                continue
            table = rec.get("table") or {}

            def mean(key, table=table):
                vals = [t[key] for t in table.values() if t.get(key) is not None]
                return sum(vals) / len(vals) if vals else None

            es, loc = mean("Edit_Succ"), mean("Locality")
            if es is None or loc is None:
                continue
            points.append({"number": rec.get("number"), "params": rec.get("params") or {}, "es": es, "loc": loc,
                           "port": mean("Portability")})
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats on both Edit Succ. and Locality (ties kept), sorted by Edit Succ."""
    front = [p for p in points
             if not any(q["es"] >= p["es"] and q["loc"] >= p["loc"] and (q["es"] > p["es"] or q["loc"] > p["loc"])
                        for q in points)]
    return sorted(front, key=lambda p: p["es"])


def plot(points: list[dict], out: str, options=DEFAULT_OPTIONS) -> list[str]:
    """One panel per option present in the trials; returns the options drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [o for o in options if any(o in p["params"] for p in points)]
    if not drawn:
        raise ValueError("no COMPLETE trial carries any of the options " + ", ".join(options))
    cols = min(3, len(drawn))
    rows = (len(drawn) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, option in zip(axes.flat, drawn, strict=False):
        values = sorted({str(p["params"].get(option)) for p in points})
        for i, value in enumerate(values):
            group = [p for p in points if str(p["params"].get(option)) == value]
            color = f"C{i % 10}"
            ax.scatter([p["loc"] for p in group], [p["es"] for p in group], s=18, color=color, alpha=0.7,
                       label=f"{value} (n={len(group)})")
            front = pareto_front(group)
            ax.plot([p["loc"] for p in front], [p["es"] for p in front], color=color, lw=1)
        ax.set_title(option)
        ax.set_xlabel("Locality (dev)")
        ax.set_ylabel("Edit Succ. (dev)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", help="a tuning output folder (holding trials.jsonl)")
    parser.add_argument("--out", default=None, help="PNG (default: STUDY_DIR/pareto.png)")
    parser.add_argument("--options", default=",".join(DEFAULT_OPTIONS), help="comma-separated option names")
    args = parser.parse_args(argv)
    points = load_points(os.path.join(args.study_dir, "trials.jsonl"))
    out = args.out or os.path.join(args.study_dir, "pareto.png")
    drawn = plot(points, out, tuple(o for o in args.options.split(",") if o))
    print(f"{len(points)} complete trials, panels: {', '.join(drawn)} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
