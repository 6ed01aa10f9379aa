"""Uncertainty of KnowEdit numbers: per-case metric values, bootstrap confidence intervals over items, and
paired comparisons of two methods on the same items.

A KnowEdit table number is a mean over cases (Edit Succ., Portability, Locality, Fluency), so its sampling
uncertainty is that of a mean over the evaluated items. `bootstrap_ci` resamples items with replacement
(scipy.stats.bootstrap, BCa interval; the percentile interval where BCa is undefined, e.g. when every value
is equal). `paired_difference` compares two methods on the items both finished: the mean of the per-item
differences, with the bootstrap CI of that mean (resampling items, so the pairing is kept). A paired CI that
excludes 0 is the evidence a "method A beats method B" claim needs; two overlapping unpaired CIs are not.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

METRICS = ("Edit Succ.", "Portability", "Locality", "Fluency")
CONFIDENCE = 0.95
N_RESAMPLES = 10_000


def case_values(record: dict, phase: str = "post") -> dict[str, float | None]:
    """One case's contribution to each table column, computed exactly as the table's mean computes it."""
    from .evaluate import summarize, table_numbers

    return table_numbers(summarize([record], phase=phase))


def per_case_values(records: Mapping[int, dict], phase: str = "post",
                    metrics: Sequence[str] = METRICS) -> dict[str, dict[int, float]]:
    """{metric: {case_id: value}} over the cases that have that metric (the table's mean is their mean)."""
    out: dict[str, dict[int, float]] = {m: {} for m in metrics}
    for case_id, record in records.items():
        values = case_values(record, phase)
        for m in metrics:
            v = values.get(m)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[m][case_id] = float(v)
    return out


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> dict:
    """{"n", "mean", "lo", "hi"}: the mean and its bootstrap CI over items (None bounds for n < 2)."""
    from scipy.stats import bootstrap

    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    mean = float(x.mean())
    if x.size < 2:
        return {"n": 1, "mean": mean, "lo": None, "hi": None}
    if np.all(x == x[0]):  # no spread: every resample has the same mean
        return {"n": int(x.size), "mean": mean, "lo": mean, "hi": mean}
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns (and returns nan) where BCa is undefined
        res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                        random_state=rng)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                            method="percentile", random_state=np.random.default_rng(seed))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"n": int(x.size), "mean": mean, "lo": lo, "hi": hi}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Mean of a[i] - b[i] over the items both have, with its bootstrap CI; "verdict" says whether the CI
    excludes 0 ("a > b", "a < b") or not ("no difference shown")."""
    common = sorted(set(a) & set(b))
    ci = bootstrap_ci([a[i] - b[i] for i in common], confidence, n_resamples, seed)
    verdict = "no difference shown"
    if ci["lo"] is not None and ci["lo"] > 0:
        verdict = "a > b"
    elif ci["hi"] is not None and ci["hi"] < 0:
        verdict = "a < b"
    return {**ci, "items": common, "verdict": verdict}


def format_ci(ci: dict, digits: int = 1) -> str:
    """"86.6 [82.1, 90.4]" (mean [lo, hi]); "-" without a mean; no bracket without a CI."""
    if ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"
