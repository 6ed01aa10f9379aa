"""Speed bench, the issue's two localization targets, measured side by side in one process.

(a) One request, all target modules: the default path (`attribute_per_request` with KNEHyperParams'
    defaults: ig_method, ig_steps, ig_request_batch) vs the naive Eq. 5 with m = 20 (module by module, step
    by step, autograd on the scaled weight), with the Jaccard overlap of their top-p ensembles (the naive
    scores are Eq. 5 m = 20; how both compare with the converged integral is in benchmarks/convergence/).
    Target: ≥ 10× faster.
(b) Items/s over N requests: the default path vs today's fast path (riemann_right, m = 20, one request
    per pass: ig_request_batch = 1). Target: ≥ 3×. And the default method at ig_request_batch 1/4/8 (the
    evidence for that default's value).
"""

from __future__ import annotations

import dataclasses

from ...attribution import aggregate, attribute_per_request
from ...ensemble import KnowledgeNeuronalEnsemble
from ...hparams import KNEHyperParams
from .localization import naive_attribution
from .measure import timed

TARGET_SINGLE = 10.0
TARGET_THROUGHPUT = 3.0
TODAY = dict(ig_method="riemann_right", ig_steps=20, ig_request_batch=1)


def default_hparams(targets, cfg) -> KNEHyperParams:
    """KNEHyperParams' own defaults for the quadrature and batching, on the bench's modules."""
    return KNEHyperParams(model_name="bench", target_modules=[cfg.target_suffix],
                          layers=sorted({t.layer for t in targets}), max_length=cfg.max_length,
                          ig_batch_size=cfg.ig_batch_size)


def _quad(hp) -> dict:
    return dict(ig_method=hp.ig_method, ig_steps=hp.ig_steps, ig_request_batch=hp.ig_request_batch)


def _neurons(scores, targets, p) -> set:
    ens = KnowledgeNeuronalEnsemble.from_scores(scores, targets, p, "global")
    return {(n, int(i)) for n, idx in ens.neurons.items() for i in idx}


def ensemble_jaccard(a: dict, b: dict, targets, p_values) -> dict:
    out = {}
    for p in p_values:
        x, y = _neurons(a, targets, p), _neurons(b, targets, p)
        out[str(p)] = len(x & y) / len(x | y) if x | y else 1.0
    return out


def _run(model, tok, requests, hp):
    return attribute_per_request(model, tok, requests, hp, progress=False)


def issue_targets(model, tok, requests, targets, cfg, device, p_values=(1, 5, 10), sweep=(1, 4, 8),
                  sweep_items: int | None = 8) -> dict:
    """(a) and (b) above; `requests[0]` is the single request of (a), all of `requests` are timed in (b),
    the first `sweep_items` in the ig_request_batch sweep."""
    hp = default_hparams(targets, cfg)
    today = dataclasses.replace(hp, **TODAY)
    request = requests[:1]
    _run(model, tok, request, dataclasses.replace(hp, ig_steps=2))  # warm-up, untimed

    # (a) one request: the default path timed before and after the naive run (mean), against load drift
    before_s, (fast,) = timed(lambda: _run(model, tok, request, hp), device)
    naive_s, naive = timed(lambda: naive_attribution(model, tok, request[0], targets, 20, cfg.max_length,
                                                     cfg.progress), device)
    after_s, _ = timed(lambda: _run(model, tok, request, hp), device)
    fast_s = (before_s + after_s) / 2
    single = dict(default=_quad(hp), fast_s=fast_s, fast_before_s=before_s, fast_after_s=after_s,
                  naive_s=naive_s, naive_steps=20, ratio=naive_s / fast_s,
                  jaccard_vs_naive20=ensemble_jaccard(fast, naive, targets, p_values),
                  meets=naive_s / fast_s >= TARGET_SINGLE, target=TARGET_SINGLE)

    # (b) items/s over all requests: today's fast path, then the default path
    today_s, today_scores = timed(lambda: _run(model, tok, requests, today), device)
    default_s, default_scores = timed(lambda: _run(model, tok, requests, hp), device)
    agg_today = aggregate(today_scores, "max")
    agg_default = aggregate(default_scores, "max")
    throughput = dict(items=len(requests), today=_quad(today), default=_quad(hp),
                      today_s=today_s, default_s=default_s,
                      today_items_per_s=len(requests) / today_s, default_items_per_s=len(requests) / default_s,
                      ratio=today_s / default_s, meets=today_s / default_s >= TARGET_THROUGHPUT,
                      target=TARGET_THROUGHPUT,
                      jaccard_vs_today=ensemble_jaccard(agg_default, agg_today, targets, p_values))

    # ig_request_batch sweep with the default quadrature (a run of (b) with the same config and items is reused)
    items = requests[:sweep_items] if sweep_items else requests
    done = {}
    if len(items) == len(requests):
        done = {tuple(_quad(today).values()): today_s, tuple(_quad(hp).values()): default_s}
    rows = []
    for k in sweep:
        hk = dataclasses.replace(hp, ig_request_batch=k)
        seconds = done.get(tuple(_quad(hk).values()))
        reused = seconds is not None
        if not reused:
            seconds, _ = timed(lambda hk=hk: _run(model, tok, items, hk), device)
        rows.append(dict(ig_request_batch=k, items=len(items), seconds=seconds, items_per_s=len(items) / seconds,
                         reused=reused))
    return dict(single=single, throughput=throughput, request_batch=rows, p_values=[str(p) for p in p_values],
                n_targets=len(targets))


def _cfg_text(q: dict) -> str:
    return f"{q['ig_method']} m={q['ig_steps']}, ig_request_batch={q['ig_request_batch']}"


def _verdict(ok: bool, target: float) -> str:
    return f"{'MEETS' if ok else 'MISSES'} the ≥ {target:g}× target"


def render_targets(res: dict, md_table) -> list[str]:
    s, t = res["single"], res["throughput"]
    jac = lambda d: " / ".join(f"{d[p]:.2f}" for p in res["p_values"])
    ps = " / ".join(res["p_values"])
    out = [f"### 0. The issue's targets: {res['n_targets']} target modules, side by side in one run", "",
           md_table(["measurement", "default path", "reference", "ratio", "verdict"],
                    [[f"(a) one request, {res['n_targets']} modules: seconds",
                      f"{s['fast_s']:.2f} ({_cfg_text(s['default'])}; {s['fast_before_s']:.2f} before, "
                      f"{s['fast_after_s']:.2f} after the naive run)",
                      f"{s['naive_s']:.2f} (naive Eq. 5, m={s['naive_steps']}: module × step loop, autograd on "
                      "the weight)", f"**{s['ratio']:.1f}×**", _verdict(s["meets"], s["target"])],
                     [f"(b) {t['items']} requests: items/s", f"{t['default_items_per_s']:.3f} "
                      f"({_cfg_text(t['default'])})",
                      f"{t['today_items_per_s']:.3f} (today's fast path: {_cfg_text(t['today'])})",
                      f"**{t['ratio']:.2f}×**", _verdict(t["meets"], t["target"])]]),
           "",
           f"Ensemble agreement (Jaccard of the top-p ensembles, global scope, p = {ps} %): (a) the default "
           f"path's ensemble vs the naive Eq. 5 m = 20 ensemble of the same request: {jac(s['jaccard_vs_naive20'])}; "
           f"(b) the default path vs today's fast path, max-aggregated over the {t['items']} requests: "
           f"{jac(t['jaccard_vs_today'])}. Agreement with the converged integral (riemann_right m = 256) over "
           "ZsRE items is measured by `python -m easyedit_kne.convergence` (benchmarks/convergence/).", "",
           f"`ig_request_batch` (requests sharing one pass) with the default quadrature, over "
           f"{res['request_batch'][0]['items']} requests:", "",
           md_table(["ig_request_batch", "seconds", "items/s"],
                    [[r["ig_request_batch"], f"{r['seconds']:.2f}" + (" (the run of (b))" if r.get("reused") else ""),
                      f"{r['items_per_s']:.3f}"]
                     for r in res["request_batch"]]), ""]
    return out
