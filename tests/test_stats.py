"""Bootstrap CIs and paired comparisons (easyedit_kne.stats)."""

import numpy as np
import pytest

from easyedit_kne import stats


def _case(rewrite, loc=None, port=None, ent=None):
    post = {"rewrite_acc": [rewrite]}
    if loc is not None:
        post["locality"] = {"k_acc": loc}
    if port is not None:
        post["portability"] = {"a_acc": port[0], "b_acc": port[1]}
    if ent is not None:
        post["fluency"] = {"ngram_entropy": ent}
    return {"post": post}


def test_per_case_values_average_to_the_table():
    from easyedit_kne.evaluate import summarize, table_numbers

    recs = {0: _case(1.0, [1.0, 0.0], ([1.0], [0.0, 1.0]), 5.0),
            1: _case(0.5, [1.0, 1.0], None, 5.5),
            2: _case(0.25, None, ([0.0], [0.0]), 6.0)}
    per = stats.per_case_values(recs)
    table = table_numbers(summarize(list(recs.values())))
    for m in stats.METRICS:
        assert np.mean(list(per[m].values())) == pytest.approx(table[m])
    assert set(per["Locality"]) == {0, 1} and set(per["Portability"]) == {0, 2}
    assert per["Portability"][0] == pytest.approx(75.0)  # mean over keys of each key's mean


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.binomial(1, 0.7, 30) * 100.0
    large = rng.binomial(1, 0.7, 1000) * 100.0
    a, b = stats.bootstrap_ci(small, n_resamples=2000), stats.bootstrap_ci(large, n_resamples=2000)
    assert a["lo"] < a["mean"] < a["hi"] and b["lo"] < b["mean"] < b["hi"]
    assert (b["hi"] - b["lo"]) < (a["hi"] - a["lo"]) / 3
    # a normal-theory check of the width: 2 * 1.96 * sd / sqrt(n)
    expected = 2 * 1.96 * large.std(ddof=1) / np.sqrt(large.size)
    assert (b["hi"] - b["lo"]) == pytest.approx(expected, rel=0.15)


def test_bootstrap_degenerate_and_tiny_inputs():
    assert stats.bootstrap_ci([100.0] * 20) == {"n": 20, "mean": 100.0, "lo": 100.0, "hi": 100.0}
    assert stats.bootstrap_ci([3.0])["lo"] is None
    assert stats.bootstrap_ci([])["mean"] is None
    # one odd value out: BCa can be undefined; the interval must still be finite and ordered
    ci = stats.bootstrap_ci([100.0] * 19 + [0.0], n_resamples=2000)
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and np.isfinite(ci["lo"])


def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).normal(size=50)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)


def test_paired_difference_uses_only_shared_items_and_keeps_pairs():
    rng = np.random.default_rng(2)
    base = rng.normal(50, 20, 60)
    a = {i: float(v + 2.0) for i, v in enumerate(base)}          # a is b + 2 on every shared item
    b = {i: float(v) for i, v in enumerate(base)}
    b[1000] = 0.0                                                 # not shared: ignored
    d = stats.paired_difference(a, b, n_resamples=2000)
    assert d["n"] == 60 and d["mean"] == pytest.approx(2.0)
    assert d["lo"] == d["hi"] == pytest.approx(2.0) and d["verdict"] == "a > b"
    # unpaired CIs of a and b overlap widely; the paired one still decides
    ca, cb = stats.bootstrap_ci(list(a.values())), stats.bootstrap_ci(list(b.values())[:60])
    assert ca["lo"] < cb["hi"]


def test_paired_difference_no_difference():
    rng = np.random.default_rng(3)
    a = {i: float(v) for i, v in enumerate(rng.normal(0, 1, 40))}
    b = {i: float(v) for i, v in enumerate(rng.normal(0, 1, 40))}
    d = stats.paired_difference(a, b, n_resamples=2000)
    assert d["verdict"] == "no difference shown" and d["lo"] < 0 < d["hi"]
    assert stats.paired_difference(a, {})["mean"] is None


def test_format_ci():
    assert stats.format_ci({"mean": 86.61, "lo": 82.14, "hi": 90.4}) == "86.6 [82.1, 90.4]"
    assert stats.format_ci({"mean": None}) == "-"
    assert stats.format_ci({"mean": 3.0, "lo": None}) == "3.0"
