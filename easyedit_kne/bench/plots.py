"""compare's figures (matplotlib, Agg): per dataset a grouped bar chart of the four metrics with 95% bootstrap
CI whiskers (one bar per method); per method an Edit Succ. vs Locality scatter with one point per item and
dataset (per item, not per run: a run's mean hides whether the edits that succeed are the ones that break
locality, which the per-item cloud shows; jittered, since both values take few distinct levels)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from easyedit_kne.stats import METRICS

from .compare_stats import DATASET_NAMES, ci_rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_charts(runs: list[dict], prefix: Path, order) -> list[Path]:
    """PREFIX-bars-<dataset>.png per dataset; needs r["values"] (compare_stats.attach_case_values)."""
    plt = _plt()
    rows = ci_rows(runs, order)
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        members = [r for r in rows if r["dataset"] == dataset]
        width = 0.8 / len(members)
        fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(METRICS), 3.6))
        for j, row in enumerate(members):
            xs, ys, err = [], [], [[], []]
            for i, m in enumerate(METRICS):
                ci = row["ci"][m]
                if ci["mean"] is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(ci["mean"])
                err[0].append(0.0 if ci["lo"] is None else ci["mean"] - ci["lo"])
                err[1].append(0.0 if ci["hi"] is None else ci["hi"] - ci["mean"])
            ax.bar(xs, ys, width=width, yerr=err, capsize=2, label=row["label"])
        ax.set_xticks(range(len(METRICS)))
        ax.set_xticklabels(METRICS)
        ax.set_ylabel("score (x100), 95% CI")
        ax.set_title(DATASET_NAMES.get(dataset, dataset))
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = Path(f"{prefix}-bars-{_slug(dataset)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def scatters(runs: list[dict], prefix: Path) -> list[Path]:
    """PREFIX-scatter-<method>.png: per item Edit Succ. against Locality, one colour per dataset."""
    plt = _plt()
    rng = np.random.default_rng(0)
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("values") is not None:
            by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, members in by_label.items():
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
        for r in members:
            edit, loc = r["values"]["Edit Succ."], r["values"]["Locality"]
            ids = sorted(set(edit) & set(loc))
            if not ids:
                continue
            x = np.array([loc[i] for i in ids]) + rng.uniform(-1, 1, len(ids))
            y = np.array([edit[i] for i in ids]) + rng.uniform(-1, 1, len(ids))
            dataset = str((r["summary"].get("data") or {}).get("type"))
            ax.scatter(x, y, s=10, alpha=0.6, label=f"{DATASET_NAMES.get(dataset, dataset)} (n={len(ids)})")
        ax.set_xlabel("Locality (per item, x100)")
        ax.set_ylabel("Edit Succ. (per item, x100)")
        ax.set_title(label)
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(f"{prefix}-scatter-{_slug(label)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
