"""MEMIT's covariance statistics from local text (easyedit_kne/bench/covariance.py): Σ x xᵀ of each hooked
layer's input over the unpadded tokens, equal to a full forward pass's, with the layers above left unrun."""

from __future__ import annotations

import torch

from easyedit_kne.bench.covariance import compute_second_moments

TEXTS = ["The capital of Velaria is Morn", "Morn is a city", "a b c d e f g h", "Tarsk", "is is is",
         "The river of Velaria runs through Morn and Tarsk"]


def _by_hand(model, tok, names, texts, batch_size):
    modules = dict(model.named_modules())
    sums, counts, mask = {}, {n: 0 for n in names}, {}

    def hook_for(name):
        def hook(module, args):
            feats = args[0][mask["m"]].double()
            sums[name] = sums.get(name, 0) + feats.t() @ feats
            counts[name] += feats.shape[0]
        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    side, tok.padding_side = tok.padding_side, "right"
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True)
                mask["m"] = enc["attention_mask"].bool()
                model(**enc, use_cache=False)
    finally:
        tok.padding_side = side
        for h in handles:
            h.remove()
    return sums, counts


def test_second_moments_equal_a_full_pass_and_skip_the_layers_above(tiny_llama, tiny_tok):
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    want, want_n = _by_hand(tiny_llama, tiny_tok, names, TEXTS, 4)
    top = []  # the last layer and the LM head must not run once every hooked input is in
    handles = [tiny_llama.model.layers[-1].register_forward_pre_hook(lambda m, a: top.append("layer")),
               tiny_llama.lm_head.register_forward_pre_hook(lambda m, a: top.append("head"))]
    try:
        got = compute_second_moments(tiny_llama, tiny_tok, names, TEXTS, batch_size=4, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert len(tiny_llama.model.layers) > 2 and top == []
    for n in names:
        mom, count = got[n]
        assert count == want_n[n] == sum(len(tiny_tok(t)["input_ids"]) for t in TEXTS)
        torch.testing.assert_close(mom, want[n], rtol=1e-12, atol=1e-12)


def test_the_recorded_text_source_is_the_same_for_a_relative_and_an_absolute_knowedit_dir(tmp_path, monkeypatch):
    """run_config.json records the covariance texts' source; written portable it must not depend on how
    KNOWEDIT_DIR is spelled, or the resume check refuses a run restarted with the other spelling."""
    import json

    from easyedit_kne.bench.covariance import covariance_plan
    from easyedit_kne.bench.portable import portable_text

    kd = tmp_path / "data" / "knowedit"
    (kd / "wikibio").mkdir(parents=True)
    for name in ("wikibio-train-all.json", "wikibio-test-all.json"):
        (kd / "wikibio" / name).write_text(json.dumps([{"text": "Morn is a city", "labels": "in Velaria"}]))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    roots = [(str(kd.resolve()), "${knowedit_dir}")]
    relative = covariance_plan(None, "../data/knowedit", max_texts=10)
    absolute = covariance_plan(None, str(kd), max_texts=10)
    assert relative.texts == absolute.texts == ["Morn is a city in Velaria"] * 2
    want = ("KnowEdit WikiBio passages (text + labels): ${knowedit_dir}/wikibio/wikibio-train-all.json, "
            "${knowedit_dir}/wikibio/wikibio-test-all.json")
    assert portable_text(relative.source, roots) == portable_text(absolute.source, roots) == want
