"""The KnowEdit summary: table numbers (x 100) from per-case pre/post metrics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .teacher_forced import _as_list


# ------------------------------------------------------------------------------------ summary
def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _section_case_mean(section: dict) -> tuple[float | None, dict]:
    """Mean over the `_acc` keys of the key's mean x 100 (EasyEdit's KnowEdit `eval`), plus per key."""
    per_key = {}
    for key, values in section.items():
        if not key.endswith("_acc"):
            continue
        values = _as_list(values) if not isinstance(values, (int, float)) else [values]
        if len(values) == 0:
            continue
        per_key[key[: -len("_acc")]] = sum(values) / len(values) * 100
    return (float(np.mean(list(per_key.values()))) if per_key else None), per_key


def summarize(all_metrics: list[dict], phase: str = "post") -> dict:
    """KnowEdit table numbers (x 100) from a list of {"pre": ..., "post": ...} case metrics.

    Edit_Succ: mean rewrite_acc[0]; Portability / Locality: mean over cases (that have any key) of the
    mean over keys of each key's mean; Fluency: mean ngram_entropy; Rephrase: mean rephrase_acc (not in
    KnowEdit's tables); *_by_key: the mean over cases of each key; Exact_Match*: the greedy exact-match
    extras. A number with no case to average is None.
    """
    cases = [m.get(phase, m) if isinstance(m, dict) else m for m in all_metrics]
    if not cases:
        raise ValueError("summarize: no case metrics given")
    rewrites = [_as_list(c["rewrite_acc"])[0] * 100 for c in cases if "rewrite_acc" in c]
    edit = float(np.mean(rewrites)) if rewrites else None
    rephrase = _mean([float(np.mean(c["rephrase_acc"])) * 100 for c in cases if c.get("rephrase_acc")])
    out: dict[str, Any] = {"num_cases": len(cases), "Edit_Succ": edit}
    for section, name in (("portability", "Portability"), ("locality", "Locality")):
        case_means, by_key = [], {}
        for c in cases:
            mean, per_key = _section_case_mean(c.get(section) or {})
            if mean is not None:
                case_means.append(mean)
            for k, v in per_key.items():
                by_key.setdefault(k, []).append(v)
        out[name] = float(np.mean(case_means)) if case_means else None
        out[f"{name}_by_key"] = {k: float(np.mean(v)) for k, v in by_key.items()}
    flu = [c["fluency"]["ngram_entropy"] * 100 for c in cases if c.get("fluency")]
    out["Fluency"] = float(np.mean(flu)) if flu else None
    out["Rephrase"] = rephrase
    ems = [c["exact_match"] for c in cases if c.get("exact_match")]
    if ems:
        out["Exact_Match"] = _mean([float(np.mean(e["rewrite"])) * 100 for e in ems if e.get("rewrite")])
        out["Exact_Match_Rephrase"] = _mean(
            [float(np.mean(e["rephrase"])) * 100 for e in ems if e.get("rephrase")])
        port = []
        for e in ems:
            vals = [float(np.mean(v)) * 100 for v in (e.get("portability") or {}).values() if v]
            if vals:
                port.append(float(np.mean(vals)))
        out["Exact_Match_Portability"] = float(np.mean(port)) if port else None
    return out


TABLE_COLUMNS = {"Edit Succ.": "Edit_Succ", "Portability": "Portability", "Locality": "Locality",
                 "Fluency": "Fluency", "Exact Match": "Exact_Match", "Rephrase": "Rephrase"}


def table_numbers(summary: dict) -> dict:
    """`summarize()`'s numbers under the column names of KnowEdit's tables ("Edit Succ.", ...)."""
    return {column: summary.get(key) for column, key in TABLE_COLUMNS.items()}
