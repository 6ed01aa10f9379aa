"""The paper's analyses (§4.3-4.6) as verdicts, and the sequential-editing table, from the claims sweeps'
results (easyedit_kne/bench/conf/sweep/; read by claims_data.py). Every claim is split into atomic lines;
each line is decided by a paired bootstrap CI over the same items (the decision rules: RULES).
"""

from __future__ import annotations

from dataclasses import dataclass

from easyedit_kne.stats import METRICS, bootstrap_ci

from .claims_data import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_MEASURED,
    NOT_RUN,
    Level,
    as_number,
    conjunction,
    contrast,
    directional,
    fmt_ci,
    item_values,
    mean_of,
    non_inferior,
)

OVERALL = ("Edit Succ.", "Portability", "Locality")  # the per-item "overall" score: their mean
LOCAL_GROUP = ("mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj")
MARGIN = 2.0  # non-inferiority margin (points on the x100 scale) for "matches or beats"
RULES = (
    "A paper claim with several parts (\"Edit Succ. and Portability fall\") gets one line per part. "
    "Every verdict compares runs on the same items (paired): the per-item contrast's mean and its 95% "
    "bootstrap CI (BCa, 10,000 resamples, easyedit_kne.stats.bootstrap_ci). A claim that A is higher than B "
    "**holds** if the CI of A - B lies above 0, **does not hold** if it lies below 0, and is **inconclusive** "
    "otherwise (including a CI of exactly [0, 0]: no item differs, e.g. both at the ceiling). \"Matches or "
    "beats\" (non-inferiority) holds if the CI's lower bound is above -{margin} points, does not hold if its "
    "upper bound is below -{margin}. A claim with several parts holds if every part holds, does not hold if "
    "one part does not hold. Where a claim names the best of several runs (a module's better neuron axis, "
    "the best FFN map), the best is picked by its mean on these items, so those verdicts lean towards "
    "\"holds\". Missing runs give \"not run\", never a number; a metric the runs did not compute (Fluency with "
    "eval.fluency=false) gives \"not measured\".")


@dataclass
class ClaimLine:
    section: str
    statement: str  # what the paper claims
    measured: str  # what was measured here
    verdict: str


def _m(level: Level, metric) -> str:
    value = mean_of(level, metric)
    return "-" if value == float("-inf") else f"{value:.1f}"


def _pair(a: Level, b: Level, la: str, lb: str, metric, rule=directional, **kw) -> tuple[str, str]:
    name = metric if isinstance(metric, str) else "mean(" + ", ".join(metric) + ")"
    missing = [label for lv, label in ((a, la), (b, lb)) if not item_values(lv, metric)]
    if missing:
        why = " (run with eval.fluency=false)" if metric == "Fluency" else ""
        return f"{name}: not computed in {' and '.join(missing)}{why}", NOT_MEASURED
    ci = contrast([a, b], [1.0, -1.0], metric)
    text = f"{name}: {la} {_m(a, metric)} vs {lb} {_m(b, metric)}; {la} - {lb} = {fmt_ci(ci)}"
    return text, rule(ci, **kw)


def _not_run(section: str, statements: list[str], why: str) -> list[ClaimLine]:
    return [ClaimLine(section, s, why, NOT_RUN) for s in statements]


# ------------------------------------------------------------------------------------ §4.5: p
P_CLAIMS = [("Edit Succ.", 1, "more neurons (larger p) raise Edit Succ."),
            ("Portability", 1, "more neurons (larger p) raise Portability"),
            ("Locality", -1, "fewer neurons (smaller p) raise Locality")]


def claims_p(levels: list[Level]) -> list[ClaimLine]:
    levels = sorted(levels, key=lambda lv: float(lv.params["p"]))
    if len(levels) < 2:
        return _not_run("§4.5", [c[2] for c in P_CLAIMS], "needs at least two p values")
    lo, hi = levels[0], levels[-1]
    out = []
    for metric, sign, statement in P_CLAIMS:
        a, b = (hi, lo) if sign > 0 else (lo, hi)
        text, verdict = _pair(a, b, f"p={a.params['p']}", f"p={b.params['p']}", metric)
        out.append(ClaimLine("§4.5", statement, text, verdict))
    return out


# ------------------------------------------------------------------------------------ §4.6: batch size
def claims_batch(levels: list[Level]) -> list[ClaimLine]:
    levels = sorted(levels, key=lambda lv: int(lv.params["bs"]))
    names = ["Edit Succ. falls with batch size", "Edit Succ. levels off with batch size",
             "Portability falls with batch size", "Portability levels off with batch size",
             "Locality rises then falls with batch size", "Fluency rises with batch size"]
    if len(levels) < 3:
        return _not_run("§4.6", names, "needs at least three batch sizes")
    first, second, before_last, last = levels[0], levels[1], levels[-2], levels[-1]
    bs = [f"bs={lv.params['bs']}" for lv in (first, second, before_last, last)]
    out = []
    for metric in ("Edit Succ.", "Portability"):
        text, verdict = _pair(first, last, bs[0], bs[3], metric)
        out.append(ClaimLine("§4.6", f"{metric} falls with batch size", text, verdict))
        ci = contrast([first, second, before_last, last], [1.0, -1.0, -1.0, 1.0], metric)
        text = (f"{metric}: first drop ({bs[0]} - {bs[1]}) minus last drop ({bs[2]} - {bs[3]}) = {fmt_ci(ci)}"
                " (positive: the fall flattens)")
        out.append(ClaimLine("§4.6", f"{metric} levels off with batch size", text, directional(ci)))
    inner = max(levels[1:-1], key=lambda lv: mean_of(lv, "Locality"))
    k = f"bs={inner.params['bs']}"
    t1, v1 = _pair(inner, first, k, bs[0], "Locality")
    t2, v2 = _pair(inner, last, k, bs[3], "Locality")
    out.append(ClaimLine("§4.6", names[4], f"{t1}; {t2.split('; ')[1]} (peak at the best inner size, {k})",
                         conjunction([v1, v2])))
    text, verdict = _pair(last, first, bs[3], bs[0], "Fluency")
    out.append(ClaimLine("§4.6", names[5], text, verdict))
    return out


# ------------------------------------------------------------------------------------ §4.4: localization size
def claims_loc_size(levels: list[Level], margin: float = MARGIN) -> list[ClaimLine]:
    by_size = {int(lv.params["loc"]): lv for lv in levels}
    statements = [f"about 200 localization items match or beat full-data localization ({m})" for m in METRICS]
    if 200 not in by_size:
        return _not_run("§4.4", statements, "no run with localization.size=200")
    bigger = [s for s in by_size if s > 200]
    if not bigger:
        return _not_run("§4.4", statements, "no full-data reference: needs a run with localization.size > 200 "
                        "(the protocol's localization split stops at 200; see conf/sweep/loc_size.yaml)")
    full = max(bigger)
    a, b = by_size[200], by_size[full]
    secs = [(lv.summary.get("timings") or {}).get("localization_s") for lv in (a, b)]
    out = []
    for metric, statement in zip(METRICS, statements, strict=True):
        text, verdict = _pair(a, b, "200 items", f"{full} items", metric, rule=non_inferior, margin=margin)
        if None not in secs:
            text += f"; localization {secs[0]:.0f} s vs {secs[1]:.0f} s"
        out.append(ClaimLine("§4.4", statement, text, verdict))
    return out


# ------------------------------------------------------------------------------------ §4.3: target module
def _modules(levels: list[Level]) -> dict[str, list[Level]]:
    out: dict[str, list[Level]] = {}
    for lv in levels:
        out.setdefault(lv.params["module"], []).append(lv)
    return out


def _best(levels: list[Level], metric) -> Level:
    return max(levels, key=lambda lv: mean_of(lv, metric))


def _label(lv: Level) -> str:
    return f"{lv.params['module']} ({lv.params.get('axis', 'auto')})"


def claims_target_module(levels: list[Level]) -> list[ClaimLine]:
    mods = _modules(levels)
    out = []
    ffn = [lv for m, lvs in mods.items() if m.startswith("mlp.") for lv in lvs]
    attn = [lv for m, lvs in mods.items() if m.startswith("self_attn.") for lv in lvs]
    st = "the FFN (mlp) maps edit best (Edit Succ.)"
    if ffn and attn:
        a, b = _best(ffn, "Edit Succ."), _best(attn, "Edit Succ.")
        text, verdict = _pair(a, b, _label(a), _label(b), "Edit Succ.")
        out.append(ClaimLine("§4.3", st, "best FFN vs best attention run: " + text, verdict))
    else:
        out += _not_run("§4.3", [st], "needs runs on both mlp.* and self_attn.* maps")
    st = "mlp.down_proj is best overall (per-item mean of Edit Succ., Portability, Locality)"
    others = [m for m in mods if m != "mlp.down_proj"]
    if "mlp.down_proj" in mods and others:
        a = _best(mods["mlp.down_proj"], OVERALL)
        b = _best([_best(mods[m], OVERALL) for m in others], OVERALL)
        text, verdict = _pair(a, b, _label(a), _label(b), OVERALL)
        out.append(ClaimLine("§4.3", st, "down_proj vs the runner-up: " + text, verdict))
    else:
        out += _not_run("§4.3", [st], "needs mlp.down_proj and at least one other map")
    for metric in ("Locality", "Fluency"):
        st = f"gate_proj, up_proj and q_proj give the best {metric}"
        rest = [m for m in mods if m not in LOCAL_GROUP]
        if all(m in mods for m in LOCAL_GROUP) and rest:
            reps = [_best(mods[m], metric) for m in LOCAL_GROUP]
            a = min(reps, key=lambda lv: mean_of(lv, metric))
            b = _best([_best(mods[m], metric) for m in rest], metric)
            text, verdict = _pair(a, b, _label(a), _label(b), metric)
            out.append(ClaimLine("§4.3", st, "weakest of the three vs best other map: " + text, verdict))
        else:
            out += _not_run("§4.3", [st], "needs gate_proj, up_proj, q_proj and another map")
    return out


# ------------------------------------------------------------------------------------ sequential editing
SEQ_METHODS = ("KNE", "FT-M", "ROME", "MEMIT", "FiNE")
SEQ_T = (1, 10, 50, 100)


def retention(level: Level) -> dict:
    """Edit Succ. of the earlier edits (all but the last edit call) on the model carrying all T edits."""
    bs = int(level.summary.get("batch_size") or 1)
    earlier = level.case_ids[:-bs] if level.n > bs else []
    vals = level.values.get("Edit Succ.") or {}
    return bootstrap_ci([vals[i] for i in earlier if i in vals])


def sequential_rows(groups: dict[str, list[Level]]) -> list[dict]:
    """One row per (data set, method, T): n, retention and the four metrics with CIs; "not run" rows for
    the methods and T of the plan that have no results."""
    from easyedit_kne.stats import bootstrap_ci as ci

    found: dict[tuple, Level] = {}
    for group, levels in groups.items():
        data, _, method = group.partition("/")
        for lv in levels:
            found[(data, method, as_number(lv.params["T"]))] = lv
    datasets = sorted({k[0] for k in found}) or ["zsre"]
    methods = list(SEQ_METHODS) + sorted({k[1] for k in found} - set(SEQ_METHODS))
    rows = []
    for data in datasets:
        for method in methods:
            ts = sorted(set(SEQ_T) | {t for d, m, t in found if d == data and m == method})
            for t in ts:
                lv = found.get((data, method, t))
                if lv is None:
                    rows.append({"data": data, "method": method, "T": t, "status": NOT_RUN})
                    continue
                rows.append({"data": data, "method": method, "T": t, "n": lv.n,
                             "status": "complete" if lv.summary.get("complete") else "partial",
                             "Retention": retention(lv),
                             **{m: ci(list((lv.values.get(m) or {}).values())) for m in METRICS}})
    return rows


SWEEP_CLAIMS = {"target_module": claims_target_module, "loc_size": claims_loc_size, "p": claims_p,
                "batch": claims_batch}
SECTIONS = {"target_module": "§4.3 storage location", "loc_size": "§4.4 localization size",
            "p": "§4.5 share of neurons p", "batch": "§4.6 batch size"}
__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "NOT_MEASURED", "NOT_RUN", "RULES", "SWEEP_CLAIMS", "ClaimLine",
           "sequential_rows"]
