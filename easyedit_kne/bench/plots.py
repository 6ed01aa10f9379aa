"""compare's figures (matplotlib, Agg): per dataset a grouped bar chart of the four metrics with 95% bootstrap
CI whiskers (one bar per method); per method an Edit Succ. vs Locality scatter with one point per item and
dataset (per item, not per run: a run's mean hides whether the edits that succeed are the ones that break
locality, which the per-item cloud shows; jittered, since both values take few distinct levels)."""

from __future__ import annotations

import re
from contextlib import contextmanager
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


@contextmanager
def _figure(size: tuple[float, float], title: str, path: Path, legend_cols: int = 1):
    """One figure's axes, titled; on exit the legend is drawn and the figure laid out, saved (dpi 110) to
    `path` and closed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    try:
        ax.set_title(title)
        yield ax
        ax.legend(fontsize=7, ncol=legend_cols)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def bar_charts(runs: list[dict], prefix: Path, order) -> list[Path]:
    """PREFIX-bars-<dataset>.png per dataset; needs r["values"] (compare_stats.attach_case_values)."""
    rows = ci_rows(runs, order)
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        members = [r for r in rows if r["dataset"] == dataset]
        width = 0.8 / len(members)
        path = Path(f"{prefix}-bars-{_slug(dataset)}.png")
        with _figure((2.2 + 1.6 * len(METRICS), 3.6), DATASET_NAMES.get(dataset, dataset), path, 2) as ax:
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
        out.append(path)
    return out


def scatters(runs: list[dict], prefix: Path) -> list[Path]:
    """PREFIX-scatter-<method>.png: per item Edit Succ. against Locality, one colour per dataset."""
    rng = np.random.default_rng(0)
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("values") is not None:
            by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, members in by_label.items():
        path = Path(f"{prefix}-scatter-{_slug(label)}.png")
        with _figure((4.2, 3.8), label, path) as ax:
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
            ax.set_xlim(-5, 105)
            ax.set_ylim(-5, 105)
        out.append(path)
    return out
