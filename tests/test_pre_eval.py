"""Cheaper evaluation: fast_edit_quality (one batched teacher-forced pass, exact match from the argmax) gives
compute_edit_quality's values, and the content-addressed pre-edit cache gives the computed ones."""

from __future__ import annotations

import json
import warnings

import pytest
import tiny_models as tm
import torch

from easyedit_kne import evaluate as ev
from easyedit_kne.bench import pre_eval as pe
from easyedit_kne.bench.evaluator import Evaluator


def requests_of(facts) -> list[dict]:
    out = []
    for i, f in enumerate(facts):
        a, b = facts[(i + 1) % len(facts)], facts[(i + 2) % len(facts)]
        out.append({
            "prompt": f["prompt"], "target_new": f["target_true"] if i % 2 else f["target_new"],
            "rephrase_prompt": f["rephrase_prompt"] if i % 3 else None, "subject": f["subject"],
            # prompts of different lengths in one key: left padding, shifted positions
            "locality": {"Relation_Specificity": {"prompt": [a["prompt"], "The " + b["rephrase_prompt"]],
                                                  "ground_truth": [a["target_true"], b["target_true"]]}},
            "portability": {"reasoning": {"prompt": [b["prompt"], a["rephrase_prompt"] + " so"],
                                          "ground_truth": [b["target_true"], a["target_new"]]},
                            "Subject_Aliasing": {"prompt": [a["prompt"]], "ground_truth": [a["target_true"]]}},
        })
    return [{k: v for k, v in r.items() if v is not None} for r in out]


def both(model, tok, request, **kw):
    slow = ev.compute_edit_quality(model, tok, request, exact_match=True, test_generation=True,
                                   fluency_max_len=20, generator=torch.Generator().manual_seed(3), **kw)
    fast = ev.fast_edit_quality(model, tok, request, exact_match=True, test_generation=True,
                                fluency_max_len=20, generator=torch.Generator().manual_seed(3), **kw)
    return slow, fast


def test_fast_edit_quality_gives_every_value(fact_model, monkeypatch):
    model, tok = fact_model.model, tm.make_tokenizer()
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for request in requests_of(fact_model.facts[:8]):
        slow, fast = both(model, tok, request)
        assert fast == slow
        assert json.dumps(fast, sort_keys=True) == json.dumps(slow, sort_keys=True)
    n_slow = len([r for r in requests_of(fact_model.facts[:8])])
    # the known facts' exact match came from the teacher-forced argmax: fewer generate calls than prompts
    assert len(calls) < 2 * sum(1 + ("rephrase_prompt" in r) + 3 for r in requests_of(fact_model.facts[:8]))
    assert n_slow == 8


def test_exact_match_shortcut_agrees_with_generation(fact_model, monkeypatch):
    model, tok = fact_model.model, tm.make_tokenizer()
    f = fact_model.facts[0]
    request = {"prompt": f["prompt"], "target_new": f["target_true"]}
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("greedy was known from the argmax"))
    fast = ev.fast_edit_quality(model, tok, request, exact_match=True)
    monkeypatch.undo()
    assert fast["exact_match"] == {"rewrite": [1.0], "portability": {}}
    assert fast == ev.compute_edit_quality(model, tok, request, exact_match=True)
    # a near tie is not trusted: with the margin out of reach every prompt is generated
    monkeypatch.setattr("easyedit_kne.evaluate.batched.MARGIN", float("inf"))
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert ev.fast_edit_quality(model, tok, request, exact_match=True) == fast and calls == [1]


def test_batched_groups_keep_each_rows_positions(fact_model):
    """Without explicit position_ids the narrower groups would sit at other positions; the values match."""
    model, tok = fact_model.model, tm.make_tokenizer()
    long = " ".join(f["prompt"] for f in fact_model.facts[:3])
    groups = [ev.encode_group(tok, [f["prompt"] for f in fact_model.facts[3:6]],
                              [f["target_new"] for f in fact_model.facts[3:6]], locality=True),
              ev.encode_group(tok, long, "x", max_length=200, locality=True)]
    from easyedit_kne.evaluate.batched import run_groups

    argmax, margin = run_groups(model, groups, torch.device("cpu"))
    for g, am, mg in zip(groups, argmax, margin, strict=True):
        with torch.no_grad():
            logits = model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits
        top = logits.topk(2, dim=-1).values
        real = g["attention_mask"].bool()
        assert ev.score_group(g, am) == ev.score_group(g, logits.argmax(-1))
        # the logits themselves agree: every row ran at its own positions
        torch.testing.assert_close(mg[real], (top[..., 0] - top[..., 1])[real], atol=1e-4, rtol=0)


class Cfg:
    class eval:  # noqa: N801
        fluency, pre_fluency, fluency_max_len, exact_match, seed = True, False, 20, True, 0


def test_pre_eval_cache_reuses_and_rejects_damaged_files(fact_model, tmp_path):
    model, tok = fact_model.model, tm.make_tokenizer()
    request = requests_of(fact_model.facts[:2])[1]
    plain = Evaluator(Cfg, 40)
    cached = Evaluator(Cfg, 40, tmp_path)
    want, _ = plain(model, tok, request, 5, "pre")
    first, _ = cached(model, tok, request, 5, "pre")
    assert first == want and cached.cache.misses == 1
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and files[0].parent.name == cached.cache.fingerprint[:16]
    again, _ = Evaluator(Cfg, 40, tmp_path)(model, tok, request, 5, "pre")
    assert again == want
    # another item, another evaluation config or another model: another key
    key = pe.pre_eval_key("f", request, plain.config(5, "pre"))
    assert key != pe.pre_eval_key("f", dict(request, prompt="x"), plain.config(5, "pre"))
    assert key != pe.pre_eval_key("f", request, Evaluator(Cfg, 41).config(5, "pre"))
    assert key != pe.pre_eval_key("g", request, plain.config(5, "pre"))
    # a damaged file is recomputed, not trusted
    data = json.loads(files[0].read_text())
    data["metrics"]["rewrite_acc"] = [0.123]
    files[0].write_text(json.dumps(data))
    third = Evaluator(Cfg, 40, tmp_path)
    with pytest.warns(UserWarning, match="damaged"):
        got, _ = third(model, tok, request, 5, "pre")
    assert got == want and third.cache.rejected == 1
    files[0].write_text("{not json")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert Evaluator(Cfg, 40, tmp_path)(model, tok, request, 5, "pre")[0] == want
    assert json.loads(files[0].read_text())["metrics"] == json.loads(json.dumps(want))


def knowedit_dir():
    import os
    from pathlib import Path

    from easyedit_kne.bench.config import default_knowedit_dir

    for cand in (os.environ.get("KNOWEDIT_DIR"),
                 os.environ.get("EASYEDIT_KNE_SHARED") and Path(os.environ["EASYEDIT_KNE_SHARED"]) / "data/knowedit",
                 default_knowedit_dir()):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.mark.slow
def test_smollm2_fast_evaluation_on_dev_items():
    """DEV items only (ZsRE-test-all [200, 400), train_cf [1000, 1200)), never the test split [0, 100)."""
    from easyedit_kne.knowedit import load_knowedit
    from easyedit_kne.models import find_shared_gguf, load_model

    root = knowedit_dir()
    if find_shared_gguf() is None or root is None:
        pytest.skip("shared SmolLM2 GGUF or KnowEdit data absent (set EASYEDIT_KNE_SHARED and KNOWEDIT_DIR)")
    model, tok = load_model("smollm2-135m")
    requests = load_knowedit(root / "zsre/ZsRE-test-all.json", "zsre", size=2, offset=200)
    requests += load_knowedit(root / "wiki_counterfact/train_cf.json", "counterfact", size=1, offset=1000)
    for request in requests:
        for req in (request, dict(request, target_new=request["ground_truth"][0]
                                  if isinstance(request.get("ground_truth"), list) else request["target_new"])):
            slow, fast = both(model, tok, req)
            assert fast == slow


def test_near_ties_rerun_each_group_alone(fact_model, monkeypatch):
    model, tok = fact_model.model, tm.make_tokenizer()
    monkeypatch.setattr("easyedit_kne.evaluate.batched.TIE", float("inf"))
    for request in requests_of(fact_model.facts[8:11]):
        slow, fast = both(model, tok, request)
        assert fast == slow
