"""The claims sweeps' results, read back: per sweep level, its summary, its per-item metric values, and paired
contrasts between levels with their bootstrap CIs and verdicts (easyedit_kne.stats).

Layout (written by `easyedit-kne knowedit sweep=<name>`, easyedit_kne/bench/conf/sweep/):

    <root>/<sweep>/<group>/<key>=<value>[,<key>=<value>]/summary.json, cases.jsonl

`group` is the folder(s) between the sweep and the level, e.g. "zsre-n100" (data set and N) or, for the
sequential sweep, "zsre/KNE". A level's key/value pairs come from its folder name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from easyedit_kne.stats import METRICS, bootstrap_ci, per_case_values

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"
NOT_MEASURED = "not measured"  # the runs exist but did not compute the metric (e.g. eval.fluency=false)


@dataclass
class Level:
    """One run of a sweep: its parameters, summary and per-item values {metric: {case_id: value}}."""

    params: dict[str, str]
    path: Path
    summary: dict
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    case_ids: list[int] = field(default_factory=list)  # finished, error-free, in edit order

    @property
    def n(self) -> int:
        return len(self.case_ids)

    def mean(self, metric: str) -> float | None:
        vals = self.values.get(metric) or {}
        return sum(vals.values()) / len(vals) if vals else None


def parse_params(name: str) -> dict[str, str] | None:
    """"module=mlp.up_proj,axis=out" -> {"module": "mlp.up_proj", "axis": "out"}; None if not key=value."""
    out = {}
    for part in name.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            return None
        out[key] = value
    return out


def _records(path: Path) -> dict[int, dict]:
    from .case_log import CASES, parse_case_lines

    file = path / CASES
    if not file.is_file():
        return {}
    records, _, _ = parse_case_lines(file.read_bytes(), file)
    return {cid: r for cid, r in records.items() if "error" not in r}


def load_sweep(root: str | Path, sweep: str) -> dict[str, list[Level]]:
    """{group: [Level, ...]} of a sweep under root (empty when the sweep was not run)."""
    base = Path(root) / sweep
    groups: dict[str, list[Level]] = {}
    if not base.is_dir():
        return groups
    for summary_file in sorted(base.rglob("summary.json")):
        level_dir = summary_file.parent
        params = parse_params(level_dir.name)
        if params is None:
            continue
        with open(summary_file, encoding="utf-8") as f:
            summary = json.load(f)
        records = _records(level_dir)
        group = level_dir.parent.relative_to(base).as_posix()
        groups.setdefault(group, []).append(
            Level(params, level_dir, summary, per_case_values(records), sorted(records)))
    return groups


def as_number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


# ------------------------------------------------------------------------------------------- statistics
def contrast(levels: list[Level], weights: list[float], metric: str | tuple[str, ...]) -> dict:
    """Bootstrap CI of the per-item weighted sum sum_j w_j * value_j(item) over the items every level has
    (the same items: a paired contrast). `metric` may be a tuple: then the per-item mean of those metrics.
    A two-level contrast with weights (1, -1) is the paired difference a - b."""
    per_level = [item_values(lv, metric) for lv in levels]
    common = sorted(set.intersection(*(set(v) for v in per_level))) if per_level else []
    diffs = [sum(w * v[i] for w, v in zip(weights, per_level, strict=True)) for i in common]
    return {**bootstrap_ci(diffs), "items": common}


def item_values(level: Level, metric: str | tuple[str, ...]) -> dict[int, float]:
    if isinstance(metric, str):
        return dict(level.values.get(metric) or {})
    parts = [level.values.get(m) or {} for m in metric]
    common = set.intersection(*(set(p) for p in parts)) if parts else set()
    return {i: sum(p[i] for p in parts) / len(parts) for i in common}


def mean_of(level: Level, metric: str | tuple[str, ...]) -> float:
    vals = item_values(level, metric)
    return sum(vals.values()) / len(vals) if vals else -math.inf


def directional(ci: dict) -> str:
    """A claim that the contrast is positive: holds if its 95% CI lies above 0, does not hold if below 0."""
    if ci.get("lo") is None:
        return INCONCLUSIVE
    if ci["lo"] > 0:
        return HOLDS
    if ci["hi"] < 0:
        return FAILS
    return INCONCLUSIVE


def non_inferior(ci: dict, margin: float) -> str:
    """A claim that the contrast is >= 0 up to `margin` ("matches or beats"): holds if the CI's lower bound
    is above -margin, does not hold if its upper bound is below -margin."""
    if ci.get("lo") is None:
        return INCONCLUSIVE
    if ci["lo"] > -margin:
        return HOLDS
    if ci["hi"] < -margin:
        return FAILS
    return INCONCLUSIVE


def conjunction(verdicts: list[str]) -> str:
    """Every part must hold; one part that does not hold settles it; otherwise inconclusive."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if FAILS in verdicts:
        return FAILS
    if verdicts and all(v == NOT_MEASURED for v in verdicts):
        return NOT_MEASURED
    return INCONCLUSIVE


def fmt_ci(ci: dict, digits: int = 1) -> str:
    """"+3.0 [0.5, 5.5] (n=10)"; "-" without a value."""
    if ci.get("mean") is None:
        return "-"
    body = f"{ci['mean']:+.{digits}f}"
    if ci.get("lo") is not None:
        body += f" [{ci['lo']:+.{digits}f}, {ci['hi']:+.{digits}f}]"
    return body + f" (n={ci['n']})"


def level_cis(level: Level) -> dict[str, dict]:
    return {m: bootstrap_ci(list((level.values.get(m) or {}).values())) for m in METRICS}
