"""KNE's `context_prefixes`: the shipped prefixes, their choice per request, and an edit trained on them holds
after them (and the same edit without the option holds less there)."""

import copy

import pytest
import tiny_models as tm

from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model, localize
from easyedit_kne.contexts import choose_prefixes, context_requests, prefixes

BASE = dict(model_name="fact-model", ig_steps=4, p=5.0, num_steps=15, lr=0.02, t_loss=0.0)


def test_prefixes_shipped_deterministic_and_distinct():
    assert len(prefixes()) >= 20 and all(p.endswith(".") for p in prefixes())
    a = choose_prefixes("The capital of France is", 3, 0)
    assert a == choose_prefixes("The capital of France is", 3, 0) and len(set(a)) == 3
    assert choose_prefixes("The capital of France is", 3, 1) != a or choose_prefixes("Other prompt", 3, 0) != a
    reqs = [{"prompt": "A is", "target_new": "x", "subject": "A"}, {"prompt": "B is", "target_new": "y"}]
    out = context_requests(reqs, 2, 42)
    assert len(out) == 4 and context_requests(reqs, 0, 42) == []
    assert [r["target_new"] for r in out] == ["x", "x", "y", "y"] and out[0]["subject"] == "A"
    assert all(r["prompt"].endswith(" " + q["prompt"]) and r["prompt"][: -len(q["prompt"]) - 1] in prefixes()
               for r, q in zip(out, [reqs[0], reqs[0], reqs[1], reqs[1]], strict=True))
    with pytest.raises(ValueError, match="context_prefixes"):
        KNEHyperParams(**BASE, context_prefixes=-1)


def test_edit_trained_after_prefixes_holds_there(fact_model):
    fm = fact_model
    reqs = tm.edit_requests(fm.facts[:2])
    ensemble = localize(fm.model, fm.tok, reqs, KNEHyperParams(**BASE), progress=False)
    prefixed = context_requests(reqs, 3, 42)

    def edit(**kw):
        model, stats = copy.deepcopy(fm.model), EditStats()
        apply_kne_to_model(model, fm.tok, reqs, KNEHyperParams(**{**BASE, **kw}), ensemble=ensemble, stats=stats)
        return model, stats

    plain, s_plain = edit()
    ctx, s_ctx = edit(context_prefixes=3)
    assert s_ctx.losses[0] != pytest.approx(s_plain.losses[0])  # the prefixed copies are in the loss
    assert tm.target_nll(ctx, fm.tok, prefixed) < 0.8 * tm.target_nll(plain, fm.tok, prefixed)
    # stop_on accuracy waits for the prefixed copies too: every target token is the argmax after them
    model, stats = edit(context_prefixes=3, stop_on="accuracy", num_steps=80)
    assert stats.trained_holds and stats.steps < 80
    assert tm.targets_are_argmax(model, fm.tok, prefixed)
