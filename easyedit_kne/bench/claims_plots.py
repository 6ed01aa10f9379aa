"""The claims figures (matplotlib, Agg): one PNG per sweep, one panel per metric, the mean with its 95%
bootstrap CI over items at every level of the sweep."""

from __future__ import annotations

from pathlib import Path

from easyedit_kne.stats import METRICS

from .claims_data import Level, level_cis


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(cis: list[dict]) -> tuple[list, list, list]:
    ys, lo, hi = [], [], []
    for ci in cis:
        m = ci["mean"]
        ys.append(float("nan") if m is None else m)
        lo.append(0.0 if m is None or ci["lo"] is None else m - ci["lo"])
        hi.append(0.0 if m is None or ci["hi"] is None else ci["hi"] - m)
    return ys, lo, hi


def _not_measured(ax, cis: list[dict]) -> bool:
    """Label a panel whose metric no run computed (Fluency with eval.fluency=false) instead of leaving it blank."""
    if any(ci.get("mean") is not None for ci in cis):
        return False
    ax.text(0.5, 0.5, "not measured\n(eval.fluency=false)", ha="center", va="center", transform=ax.transAxes,
            fontsize=8, color="0.4")
    ax.set_yticks([])
    return True


def line_figure(levels: list[Level], key: str, xlabel: str, path: Path, title: str, log_x: bool = False,
                extra_timing: bool = False) -> Path:
    """Metric vs a numeric sweep parameter (params[key]), error bars = 95% CI."""
    plt = _plt()
    levels = sorted(levels, key=lambda lv: float(lv.params[key]))
    xs = [float(lv.params[key]) for lv in levels]
    cis = [level_cis(lv) for lv in levels]
    panels = list(METRICS) + (["localization s"] if extra_timing else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        if metric == "localization s":
            ax.plot(xs, [(lv.summary.get("timings") or {}).get("localization_s") or 0 for lv in levels], "o-")
        else:
            if not _not_measured(ax, [c[metric] for c in cis]):
                ys, lo, hi = _err([c[metric] for c in cis])
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3)
        if log_x:
            ax.set_xscale("symlog" if min(xs) <= 0 else "log", **({"linthresh": 1} if min(xs) <= 0 else {}))
        ax.set_title(metric)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("x100, 95% CI")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def module_figure(levels: list[Level], path: Path, title: str) -> Path:
    """Grouped bars per target module, one bar per neuron axis, error bars = 95% CI."""
    plt = _plt()
    modules = sorted({lv.params["module"] for lv in levels}, key=lambda m: (not m.startswith("self_attn"), m))
    axes_names = sorted({lv.params.get("axis", "auto") for lv in levels})
    cell = {(lv.params["module"], lv.params.get("axis", "auto")): level_cis(lv) for lv in levels}
    width = 0.8 / len(axes_names)
    fig, axs = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axs[0], METRICS, strict=True):
        _not_measured(ax, [c[metric] for c in cell.values()])
        for j, axis in enumerate(axes_names):
            xs = [i - 0.4 + width * (j + 0.5) for i, m in enumerate(modules) if (m, axis) in cell]
            ys, lo, hi = _err([cell[(m, axis)][metric] for m in modules if (m, axis) in cell])
            ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=f"axis {axis}")
        ax.set_xticks(range(len(modules)))
        ax.set_xticklabels([m.split(".")[-1] for m in modules], rotation=45, fontsize=7)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    axs[0][0].set_ylabel("x100, 95% CI")
    axs[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def sequential_figure(rows: list[dict], path: Path, title: str) -> Path | None:
    """Retention, Edit Succ., Locality, Fluency vs T, one line per method (rows of claims.sequential_rows)."""
    done = [r for r in rows if "n" in r]
    if not done:
        return None
    plt = _plt()
    panels = ("Retention", *METRICS)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for method in dict.fromkeys(r["method"] for r in done):
            mine = sorted((r for r in done if r["method"] == method), key=lambda r: r["T"])
            ys, lo, hi = _err([r[metric] for r in mine])
            ax.errorbar([r["T"] for r in mine], ys, yerr=[lo, hi], fmt="o-", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_title(metric)
        ax.set_xlabel("T (edits)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
