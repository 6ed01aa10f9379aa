"""Attribution guards: half precision does not flush the gradients of unlikely targets to zero, the
reference reproduces a hand computation of the right Riemann sum, and a model whose forward bypasses
get_output_embeddings() gets a clear error instead of scores read at the wrong positions."""

import copy

import pytest
import tiny_models
import torch

from easyedit_kne import KNEHyperParams, attribution_fast
from easyedit_kne.attribution import attribute_request, attribute_request_naive, target_prob_sum
from easyedit_kne.modules import targets_from_hparams


def _flat(scores):
    return torch.cat([scores[n] for n in sorted(scores)])


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([_flat(a), _flat(b)]))[0, 1])


def test_fp16_scores_agree_with_fp32_for_an_unlikely_target(fact_model, monkeypatch):
    model32 = copy.deepcopy(fact_model.model)
    with torch.no_grad():
        model32.lm_head.weight.mul_(3.0)  # a confident model: the counterfactual target gets P ~ 1e-11
    model16 = copy.deepcopy(model32).half()
    fact = fact_model.facts[0]
    request = {"prompt": fact["prompt"], "target_new": fact["target_new"]}
    assert target_prob_sum(model32, fact_model.tok, request, 40) < 1e-9
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.up_proj", "mlp.down_proj"])
    ref = attribute_request(model32, fact_model.tok, request, targets_from_hparams(model32, hp), 4, 40)
    targets16 = targets_from_hparams(model16, hp)
    half = attribute_request(model16, fact_model.tok, request, targets16, 4, 40)
    assert _corr(half, ref) > 0.99  # measured 0.99999
    monkeypatch.setattr(attribution_fast, "_SCALE_F", False)  # without the scaling: every gradient underflows
    unscaled = attribute_request(model16, fact_model.tok, request, targets16, 4, 40)
    assert float(_flat(unscaled).abs().max()) == 0.0


def _hand_riemann(model, tok, request, weight, steps, eps=3e-2):
    """Per column j of `weight`: (1/m) Σ_i d/dt F((i/m)·W̄ + t·D_j) at t=0 by central differences, where D_j is
    W̄ restricted to column j: that is Σ_rows W̄ ⊙ ∂F/∂W at (i/m)·W̄, the right Riemann sum of Eq. 5.
    F = Σ_j P(y_j | x, y_<j) from the tokenizer and the model's full logits, in float64."""
    prompt_ids = tok(request["prompt"])["input_ids"]
    ids = tok(request["prompt"] + " " + request["target_new"])["input_ids"]
    x = torch.tensor([ids])

    def F():
        with torch.no_grad():
            p = torch.softmax(model(input_ids=x).logits[0].double(), -1)
        return sum(p[j - 1, ids[j]] for j in range(len(prompt_ids), len(ids)))

    base = weight.detach().clone()
    out = torch.zeros(base.shape[1], dtype=torch.float64)
    try:
        for i in range(1, steps + 1):
            for j in range(base.shape[1]):
                values = []
                for t in (eps, -eps):
                    w = base * (i / steps)
                    w[:, j] += t * base[:, j]
                    with torch.no_grad():
                        weight.copy_(w)
                    values.append(F())
                out[j] += (values[0] - values[1]) / (2 * eps) / steps
    finally:
        with torch.no_grad():
            weight.copy_(base)
    return out


@pytest.mark.parametrize("steps", [1, 2])
def test_riemann_sum_pinned_to_a_hand_computation(tiny_tok, steps):
    model = tiny_models.make_model("llama", tiny_tok).double()
    request = {"prompt": "The capital of Velaria is", "target_new": "Morn"}
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.down_proj"], layers=[1])
    (target,) = targets_from_hparams(model, hp)
    hand = _hand_riemann(model, tiny_tok, request, target.weight, steps).float()
    naive = attribute_request_naive(model, tiny_tok, request, [target], steps, 40)[target.name]
    fast = attribute_request(model, tiny_tok, request, [target], steps, 40)[target.name]
    for got in (naive, fast):
        torch.testing.assert_close(got, hand, rtol=0, atol=1e-3 * float(hand.abs().max()))  # measured 5e-5
    if steps == 2:  # the m=2 sum is not the m=1 value: the node α = 1/2 is really there
        one = _hand_riemann(model, tiny_tok, request, target.weight, 1).float()
        assert float((one - hand).abs().max()) > 0.01 * float(hand.abs().max())  # measured 4%, 10x the tolerance


def test_model_that_bypasses_get_output_embeddings_is_refused(tiny_tok):
    model = tiny_models.make_model("llama", tiny_tok)
    decoy = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    model.get_output_embeddings = lambda: decoy  # the forward keeps calling model.lm_head
    targets = targets_from_hparams(model, KNEHyperParams(model_name="x", layers=[0]))
    request = {"prompt": "The capital of Velaria is", "target_new": "Morn"}
    with pytest.raises(RuntimeError, match="get_output_embeddings"):
        attribute_request(model, tiny_tok, request, targets, 2, 40)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
