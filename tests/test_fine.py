"""FiNE (easyedit_kne.fine): hparams, contribution scores by hand, the edit on every architecture, the
fact model, and EasyEdit's contract (weights_copy, copy=True, no hooks, failures leave the model as it was)."""

import copy
import glob
import math
import os
import subprocess
import sys

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
import yaml

from easyedit_kne.fine import FiNEHyperParams, FiNEStats, apply_fine_to_model, fine_main
from easyedit_kne.fine.fine_main import LossMasks, fine_loss, log_one_minus_prob
from easyedit_kne.fine.locate import (
    capture_value_inputs,
    contribution_scores,
    eligible_value_modules,
    locate,
    resolve_value_module,
)
from easyedit_kne.tokens import encode_requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HP = dict(model_name="x", last_layer=0, lr=0.05, epochs=15, neuron_num=5)
FACT_HP = dict(model_name="fact-model", last_layer=1, lr=0.03, epochs=50)
REQUEST = {"prompt": "The capital of Velaria is", "target_new": "Morn"}


_requests = tm.edit_requests
_state = tm.state_of
_same = tm.same_state
_no_hooks = tm.no_hooks


def _restore(model, weights_copy):
    with torch.no_grad():
        for k, v in weights_copy.items():
            model.get_parameter(k)[...] = v


# ------------------------------------------------------------------------------------------------ hparams
def test_defaults_are_the_papers():
    hp = FiNEHyperParams(model_name="m")
    assert (hp.alg_name, hp.neuron_num, hp.last_layer, hp.epochs, hp.alpha, hp.beta, hp.gamma,
            hp.early_stop_prob, hp.value_module) == ("FiNE", 5, 3, 50, 1.0, 10.0, 0.1, 0.9, "auto")
    for attr in ("device", "model_parallel", "fp16", "batch_size", "max_length", "evaluation_type",
                 "use_chat_template"):
        assert hasattr(hp, attr)
    assert FiNEHyperParams(model_name="m", early_stop_prob=None).early_stop_prob is None


def test_from_hparams_accepts_string_numbers(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text(yaml.safe_dump({"alg_name": "FiNE", "model_name": "m", "lr": "5e-3", "epochs": "20",
                                    "early_stop_prob": "0.95"}))
    hp = FiNEHyperParams.from_hparams(path)
    assert hp.lr == pytest.approx(5e-3) and hp.epochs == 20 and hp.early_stop_prob == pytest.approx(0.95)


@pytest.mark.parametrize("content, field", [
    ({"alg_name": "KNE", "model_name": "m"}, "alg_name"),
    ({"alg_name": "fine", "model_name": "m"}, "alg_name"),
    ({"alg_name": "FiNE", "model_name": "m", "rewrite_module_tmp": "x"}, "rewrite_module_tmp"),
    ({"alg_name": "FiNE"}, "model_name"),
    ({"alg_name": "FiNE", "model_name": "m", "neuron_num": 0}, "neuron_num"),
    ({"alg_name": "FiNE", "model_name": "m", "neuron_num": 2.5}, "neuron_num"),
    ({"alg_name": "FiNE", "model_name": "m", "last_layer": -1}, "last_layer"),
    ({"alg_name": "FiNE", "model_name": "m", "epochs": 0}, "epochs"),
    ({"alg_name": "FiNE", "model_name": "m", "lr": ".nan"}, "lr"),
    ({"alg_name": "FiNE", "model_name": "m", "lr": 0}, "lr"),
    ({"alg_name": "FiNE", "model_name": "m", "alpha": -1}, "alpha"),
    ({"alg_name": "FiNE", "model_name": "m", "beta": "inf"}, "beta"),
    ({"alg_name": "FiNE", "model_name": "m", "gamma": -0.1}, "gamma"),
    ({"alg_name": "FiNE", "model_name": "m", "early_stop_prob": 0}, "early_stop_prob"),
    ({"alg_name": "FiNE", "model_name": "m", "early_stop_prob": 1.5}, "early_stop_prob"),
    ({"alg_name": "FiNE", "model_name": "m", "value_module": ""}, "value_module"),
])
def test_from_hparams_rejects_with_field_name(tmp_path, content, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=field):
        FiNEHyperParams.from_hparams(path)


def test_shipped_yamls_load():
    paths = sorted(glob.glob(os.path.join(REPO, "hparams", "FiNE", "*.yaml")))
    names = {os.path.basename(p) for p in paths}
    assert {"smollm2-135m.yaml", "llama-7b.yaml", "llama3-8b.yaml", "gpt-j-6B.yaml"} <= names
    for p in paths:  # the authors' values everywhere but the dev-tuned smollm2-135m.yaml (dev: 150 epochs, KL 300)
        hp = FiNEHyperParams.from_hparams(p)
        epochs, alpha = (150, 300) if os.path.basename(p) == "smollm2-135m.yaml" else (50, 1)
        assert (hp.epochs, hp.neuron_num, hp.last_layer, hp.alpha, hp.beta, hp.gamma) == (epochs, 5, 3, alpha, 10, 0.1)
    assert FiNEHyperParams.from_hparams(os.path.join(REPO, "hparams/FiNE/smollm2-135m.yaml")).delta_per == "neuron"
    assert FiNEHyperParams.from_hparams(os.path.join(REPO, "hparams/FiNE/llama-7b.yaml")).lr == 5e-3
    assert FiNEHyperParams.from_hparams(os.path.join(REPO, "hparams/FiNE/gpt-j-6B.yaml")).lr == 1e-3


def test_exports_and_registration_hook(tmp_path):
    import easyedit_kne
    from easyedit_kne.easyedit import _our_methods

    assert easyedit_kne.FiNEHyperParams is FiNEHyperParams
    assert easyedit_kne.apply_fine_to_model is apply_fine_to_model
    assert _our_methods()["FiNE"] is apply_fine_to_model
    # importing the FiNE package and its hparams stays light (no torch until the edit is used)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = REPO
    code = "import sys, easyedit_kne.fine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


# ----------------------------------------------------------------------------------- localization by hand
def test_value_module_auto_per_architecture(arch_model):
    assert resolve_value_module(arch_model.model) == arch_model.value_module
    mods = eligible_value_modules(arch_model.model, "auto", last_layer=1)
    assert [m.layer for m in mods] == list(range(arch_model.num_layers - 1))
    with pytest.raises(ValueError, match="last_layer"):
        eligible_value_modules(arch_model.model, "auto", last_layer=arch_model.num_layers)


def _hand_activations(model, arch, batch):
    """The FFN's activated intermediate units of every block, recomputed by hand from the MLP's input."""
    blocks = model.model.layers if arch == "llama" else model.transformer.h
    mlp_inputs = [None] * len(blocks)
    handles = [blk.mlp.register_forward_pre_hook(
        lambda mod, args, k=k: mlp_inputs.__setitem__(k, args[0].detach())) for k, blk in enumerate(blocks)]
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    finally:
        for h in handles:
            h.remove()
    acts, values = [], []
    for blk, x in zip(blocks, mlp_inputs, strict=True):
        if arch == "llama":
            a = F.silu(x @ blk.mlp.gate_proj.weight.T) * (x @ blk.mlp.up_proj.weight.T)
            values.append(blk.mlp.down_proj.weight)  # [hidden, d_ff]: column i = value vector of neuron i
        else:  # GPT-2 Conv1D stores [d_in, d_out]
            a = blk.mlp.act(x @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias)
            values.append(blk.mlp.c_proj.weight.T)
        acts.append(a)
    return logits, acts, values


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_contribution_scores_match_a_hand_computation(tiny_tok, arch):
    model = tm.make_model(arch, tiny_tok)
    request = {"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk Olvi"}
    batch = encode_requests(tiny_tok, [request], 40)
    logits, acts, values = _hand_activations(model, arch, batch)
    U = model.lm_head.weight
    targets = batch.target_positions(0)
    pos = targets - 1  # the positions predicting the target tokens
    tokens = logits[0, pos].argmax(-1)
    assert len(tokens) == len(targets) == 3
    # hand: c[j, l, i] = a^l_i(q_j) * sum_d W_down^l[d, i] * W_U[t_j, d]
    n_layers, d_ff = len(acts), acts[0].shape[-1]
    hand = torch.zeros(len(tokens), n_layers, d_ff)
    for j, (q, t) in enumerate(zip(pos.tolist(), tokens.tolist(), strict=True)):
        for layer in range(n_layers):
            for i in range(d_ff):
                hand[j, layer, i] = acts[layer][0, q, i] * torch.dot(values[layer][:, i], U[t])
    # the library's pipeline: captured value-module inputs -> contribution_scores
    modules = eligible_value_modules(model, "auto", last_layer=0)
    logits2, inputs = capture_value_inputs(model, batch, modules)
    torch.testing.assert_close(logits2, logits)
    scores = contribution_scores(modules, U, torch.stack([x[0, pos] for x in inputs]), tokens)
    torch.testing.assert_close(scores, hand, rtol=1e-4, atol=1e-5)
    # completeness: a layer's scores add up to its FFN output's logit-lens contribution (bias excluded)
    for layer in range(n_layers):
        ffn_out = acts[layer][0, pos] @ values[layer].T  # (tokens, hidden)
        torch.testing.assert_close(scores[:, layer].sum(-1), (ffn_out * U[tokens]).sum(-1), rtol=1e-4, atol=1e-4)
    # selection: the top neuron_num of the hand scores over layers 0..n-1-last_layer, per target token
    hp = FiNEHyperParams(model_name="x", neuron_num=4, last_layer=1)
    loc = locate(model, tiny_tok, [request], hp)
    assert loc.predicted == [tokens.tolist()]
    for j in range(len(tokens)):
        allowed = hand[j, : n_layers - 1].reshape(-1)
        want = torch.topk(allowed, 4).indices
        got = loc.top[0][j]
        assert sorted((got[:, 0] * d_ff + got[:, 1]).tolist()) == sorted(want.tolist())
        assert (got[:, 0] < n_layers - 1).all()
        torch.testing.assert_close(loc.top_scores[0][j], allowed[want], rtol=1e-4, atol=1e-5)


def test_loss_terms_match_their_definitions(tiny_tok):
    """NLL = worst target token; KL(orig || edited) on prompt positions predicting prompt tokens; repetition
    penalty = max_j -log(1 - P(y_j)) right after the target; norm = L2 of all deltas."""
    requests = [{"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk"},
                {"prompt": "Kiva speaks", "target_new": "Dutch"}]
    batch = encode_requests(tiny_tok, requests, 40)
    B, T = batch.input_ids.shape
    gen = torch.Generator().manual_seed(0)
    V = len(tiny_tok)
    logits = torch.randn(B, T, V, generator=gen) * 3
    logits_orig = torch.randn(B, T, V, generator=gen) * 3
    first_target = int(batch.labels[0, batch.target_positions(0)[0]])
    logits[0, batch.lengths[0] - 1, first_target] += 25.0  # request 0 all but repeats its first target token
    blocks = [torch.randn(3, 4, generator=gen), torch.randn(2, 4, generator=gen)]
    hp = FiNEHyperParams(model_name="x", alpha=0.7, beta=2.0, gamma=0.3)
    loss, terms, min_prob = fine_loss(logits, batch, LossMasks.from_batch(batch),
                                      torch.log_softmax(logits_orig, -1), blocks, hp)
    expected, nlls, kls, pens = 0.0, [], [], []
    ld, lo = logits.double(), logits_orig.double()  # the reference in float64
    for b in range(B):
        tpos = batch.target_positions(b).tolist()
        n_prompt, length = tpos[0], batch.lengths[b]
        ys = [int(batch.labels[b, p]) for p in tpos]
        lp = torch.log_softmax(ld[b], -1)
        nll = max(-float(lp[p - 1, y]) for p, y in zip(tpos, ys, strict=True))
        kl_rows = [float((torch.softmax(lo[b, q], -1) * (torch.log_softmax(lo[b, q], -1) - lp[q])).sum())
                   for q in range(n_prompt - 1)]
        kl = sum(kl_rows) / len(kl_rows)
        pen = max(-float(torch.log(1 - torch.softmax(ld[b, length - 1], -1)[y])) for y in ys)
        nlls.append(nll), kls.append(kl), pens.append(pen)
        expected += (nll + hp.alpha * kl + hp.beta * pen) / B
    norm = float(torch.sqrt(sum((x ** 2).sum() for x in blocks)))
    expected += hp.gamma * norm
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert pens[0] > 1.0 > pens[1]
    assert terms["penalty"] == pytest.approx(hp.beta * sum(pens) / B, rel=1e-4)
    assert terms["kl"] == pytest.approx(hp.alpha * sum(kls) / B, rel=1e-4)
    torch.testing.assert_close(min_prob, torch.exp(-torch.tensor(nlls)).float(), rtol=1e-5, atol=1e-7)
    # log(1 - p) stays exact (and differentiable) when p is 1 - 1e-20 in float32
    z = torch.tensor([[0.0, -46.0, -50.0]], requires_grad=True)
    out = log_one_minus_prob(z, torch.tensor([[0, 1]]))
    e46, e50 = math.exp(-46.0), math.exp(-50.0)
    total = math.log1p(e46 + e50)  # log of the softmax's denominator
    want = torch.tensor([math.log(e46 + e50) - total, math.log1p(e50) - total])  # log(1-p0), log(1-p1)
    torch.testing.assert_close(out[0], want, rtol=1e-5, atol=1e-6)
    out[0, 0].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ editing
def test_every_architecture_edits(arch_model):
    model = tm.make_model(arch_model.name, arch_model.tok)
    original = _state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    stats = FiNEStats()
    request = {"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk"}
    model, wc = apply_fine_to_model(model, arch_model.tok, [request], FiNEHyperParams(**HP),
                                    return_orig_weights=True, stats=stats)
    assert stats.losses[-1] < stats.losses[0] and stats.nll[-1] < stats.nll[0]
    assert _no_hooks(model) and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert wc and all(k.endswith(f"{arch_model.value_module}.weight") for k in wc)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed == set(wc)
    assert 0 < stats.num_neurons <= 2 * HP["neuron_num"]
    _restore(model, wc)
    assert _same(model, original)


def test_merged_weights_equal_the_hooked_model(tiny_tok):
    """The merge writes exactly the deltas the hook applied (GPT-2's transposed Conv1D storage included)."""
    from easyedit_kne.hooks import Hooks
    from easyedit_kne.kne_main import _hook, merge_updates

    model = tm.make_model("gpt2", tiny_tok)
    hp = FiNEHyperParams(**dict(HP, epochs=5, early_stop_prob=None))
    batch = encode_requests(tiny_tok, [REQUEST], 40)
    loc = locate(model, tiny_tok, [REQUEST], hp, batch=batch)
    updates = fine_main.build_fine_updates(loc)
    assert all(u.axis == "in" and u.scale == 1.0 for u in updates)
    fine_main.train_fine(model, batch, loc, updates, hp, FiNEStats())
    assert any(u.block.abs().sum() > 0 for u in updates)
    with torch.no_grad(), Hooks() as hooks:
        for u in updates:
            hooks.forward(u.module, _hook(u))
        hooked = model(input_ids=batch.input_ids).logits
    merge_updates(model, updates)
    with torch.no_grad():
        merged = model(input_ids=batch.input_ids).logits
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-5)


def test_fact_model_edits_succeed_and_keep_other_facts(fact_model_copy):
    fm = fact_model_copy
    edited, kept = fm.facts[0::8], [f for i, f in enumerate(fm.facts) if i % 8]  # one fact per relation
    before = tm.fact_hits(fm.model, fm.tok, kept)
    original = _state(fm.model)
    hp = FiNEHyperParams(**FACT_HP)
    for fact in edited:  # one at a time, rolled back after each (EasyEdit's edit())
        stats = FiNEStats()
        model, wc = apply_fine_to_model(fm.model, fm.tok, _requests([fact]), hp, return_orig_weights=True,
                                        stats=stats)
        assert model is fm.model
        assert tm.fact_hits(model, fm.tok, [fact], target_key="target_new") == [True], stats.losses
        assert stats.early_stopped and stats.min_target_prob[-1] > hp.early_stop_prob
        after = tm.fact_hits(model, fm.tok, kept)
        still = sum(a and b for a, b in zip(before, after, strict=True)) / max(1, sum(before))
        assert still >= 0.8, (fact["prompt"], still)
        _restore(model, wc)
        assert _same(model, original)
    # several requests in one call share one set of deltas
    stats = FiNEStats()
    apply_fine_to_model(fm.model, fm.tok, _requests(edited), hp, stats=stats)
    assert sum(tm.fact_hits(fm.model, fm.tok, edited, target_key="target_new")) == len(edited), stats.losses


def test_kl_essence_keeps_what_follows_the_subject_alone(fact_model):
    from easyedit_kne.regularizers import essence_prompts

    fm = fact_model
    reqs = _requests(fm.facts[:2])
    for r, f in zip(reqs, fm.facts[:2], strict=True):
        r["subject"] = f["subject"]
    prompts = essence_prompts(reqs)

    @torch.no_grad()
    def last_logp(model):
        return [torch.log_softmax(model(input_ids=fm.tok(p, return_tensors="pt")["input_ids"]).logits[0, -1].float(),
                                  -1) for p in prompts]

    ref = last_logp(fm.model)
    drift = {}
    for weight in (0.0, 5.0):
        model = copy.deepcopy(fm.model)
        hp = FiNEHyperParams(**dict(FACT_HP, epochs=15, early_stop_prob=None, kl_essence_weight=weight))
        apply_fine_to_model(model, fm.tok, reqs, hp)
        drift[weight] = float(torch.stack([(r.exp() * (r - n)).sum() for r, n in zip(ref, last_logp(model),
                                                                                     strict=True)]).mean())
    assert drift[5.0] < 0.7 * drift[0.0], drift
    with pytest.raises(ValueError, match="kl_essence_weight"):
        FiNEHyperParams(**dict(FACT_HP, kl_essence_weight=-0.5))


def test_selection_excludes_the_last_layers(fact_model_copy):
    fm = fact_model_copy
    n_layers = fm.num_layers
    hp = FiNEHyperParams(**dict(FACT_HP, last_layer=2, neuron_num=20, epochs=3))
    stats = FiNEStats()
    _, wc = apply_fine_to_model(fm.model, fm.tok, _requests(fm.facts[:3]), hp, return_orig_weights=True,
                                stats=stats)
    assert stats.layers and max(stats.layers) < n_layers - 2
    assert all(int(k.split(".")[2]) < n_layers - 2 for k in wc)
    assert all(int(t[..., 0].max()) < n_layers - 2 for t in stats.location.top)
    # the unrestricted selection does use the last layers (so the restriction is not vacuous)
    loc = locate(fm.model, fm.tok, _requests(fm.facts[:3]), FiNEHyperParams(**dict(FACT_HP, last_layer=0,
                                                                                   neuron_num=20)))
    assert max(loc.layers()) >= n_layers - 2
    original = _state(fm.model)
    with pytest.raises(ValueError, match="last_layer"):
        apply_fine_to_model(fm.model, fm.tok, _requests(fm.facts[:1]),
                            FiNEHyperParams(**dict(FACT_HP, last_layer=n_layers)))
    assert _same(fm.model, original)


def test_non_finite_loss_leaves_model_unchanged(fact_model_copy, monkeypatch):
    fm = fact_model_copy
    original = _state(fm.model)
    flags = {n: p.requires_grad for n, p in fm.model.named_parameters()}
    real = fine_main.fine_loss
    calls = []

    def poisoned(*args, **kwargs):  # a few good steps, then NaN
        loss, terms, min_prob = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 3 else loss), terms, min_prob

    monkeypatch.setattr(fine_main, "fine_loss", poisoned)
    hp = FiNEHyperParams(**dict(FACT_HP, early_stop_prob=None))
    with pytest.raises(FloatingPointError, match="unchanged"):
        apply_fine_to_model(fm.model, fm.tok, _requests(fm.facts[:1]), hp, return_orig_weights=True)
    assert len(calls) == 4
    assert _same(fm.model, original) and _no_hooks(fm.model) and not fm.model.training
    assert {n: p.requires_grad for n, p in fm.model.named_parameters()} == flags


def test_bad_request_fails_before_any_weight_is_touched(fact_model_copy):
    fm = fact_model_copy
    original = _state(fm.model)
    hp = FiNEHyperParams(**FACT_HP)
    for bad in ([{"prompt": "Kiva speaks", "target_new": ""}], [{"prompt": "", "target_new": "Dutch"}], []):
        with pytest.raises(ValueError):
            apply_fine_to_model(fm.model, fm.tok, bad, hp)
    assert _same(fm.model, original) and _no_hooks(fm.model)


def test_copy_leaves_input_model_untouched(fact_model_copy):
    fm = fact_model_copy
    original = _state(fm.model)
    model, wc = apply_fine_to_model(fm.model, fm.tok, _requests(fm.facts[:1]), FiNEHyperParams(**FACT_HP),
                                    copy=True, return_orig_weights=True, train_ds=None)
    assert model is not fm.model and _same(fm.model, original) and not _same(model, original)
    _restore(model, wc)
    assert _same(model, original)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model(fact_model_copy, dtype):
    """In bf16/fp16 the edit holds on the merged weights, with the fixture's trained tokenizer."""
    fm = fact_model_copy
    model = fm.model.to(dtype)
    facts = fm.facts[0:1]
    original = _state(model)
    stats = FiNEStats()
    hp = FiNEHyperParams(**FACT_HP)
    model, wc = apply_fine_to_model(model, fm.tok, _requests(facts), hp, return_orig_weights=True, stats=stats)
    assert all(v.dtype == dtype for v in wc.values()) and all(p.dtype == dtype for p in model.parameters())
    assert stats.early_stopped and stats.edit_holds, stats
    assert stats.merged_min_prob > hp.early_stop_prob and stats.merged_accuracy == 1.0
    assert tm.fact_hits(model, fm.tok, facts, target_key="target_new") == [True]
    _restore(model, wc)
    assert _same(model, original)
