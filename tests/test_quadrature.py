"""ig_method: the quadrature rules, their use in the fast path and the reference, and the convergence check."""

import pytest
import torch

from easyedit_kne import KNEHyperParams
from easyedit_kne.attribution import attribute_request, attribute_request_naive, target_prob_sum
from easyedit_kne.convergence import choose_default, convergence_table, parse_config
from easyedit_kne.modules import targets_from_hparams
from easyedit_kne.quadrature import IG_METHODS, branch_rows, ig_nodes

REQUEST = {"prompt": "The capital of Velaria is", "target_new": "Morn"}


def _flat(scores):
    return torch.cat([scores[n] for n in sorted(scores)])


def _rel(a, b):
    return float((_flat(a) - _flat(b)).norm() / _flat(b).norm())


@pytest.mark.parametrize("method", IG_METHODS)
def test_nodes_integrate_polynomials(method):
    nodes = ig_nodes(method, 4)
    assert len(nodes) == (5 if method == "trapezoid" else 4) and all(0 <= a <= 1 for a, _ in nodes)
    assert sum(w for _, w in nodes) == pytest.approx(1.0)
    for k in range(8):  # ∫_0^1 α^k dα = 1/(k+1): exact up to degree 2m-1 for Gauss-Legendre
        got = sum(w * a ** k for a, w in nodes)
        if method == "gausslegendre":
            assert got == pytest.approx(1 / (k + 1), rel=1e-12)
        if method in ("midpoint", "trapezoid") and k <= 1:
            assert got == pytest.approx(1 / (k + 1), rel=1e-12)
    assert nodes[-1] == (1.0, 0.25) if method == "riemann_right" else True
    assert branch_rows(method, 4) == {"riemann_right": 3, "midpoint": 4, "trapezoid": 4, "gausslegendre": 4}[method]


@pytest.mark.parametrize("method,order", [("riemann_right", 1), ("midpoint", 2), ("trapezoid", 2)])
def test_error_order(method, order):
    """On a smooth integrand (e^α), doubling m divides the error by 2^order."""
    import math

    def err(m):
        return abs(sum(w * math.exp(a) for a, w in ig_nodes(method, m)) - (math.e - 1))
    assert err(8) / err(16) == pytest.approx(2 ** order, rel=0.05)


def test_bad_method_is_rejected():
    with pytest.raises(ValueError, match="ig_method='simpson'.*riemann_right, midpoint, trapezoid, gausslegendre"):
        KNEHyperParams(model_name="x", ig_method="simpson")
    with pytest.raises(ValueError, match="ig_method"):
        ig_nodes("simpson", 3)
    with pytest.raises(ValueError, match="ig_steps"):
        ig_nodes("midpoint", 0)
    assert parse_config("trapezoid:8") == ("trapezoid", 8)
    with pytest.raises(ValueError, match="METHOD:STEPS"):
        parse_config("midpoint")
    with pytest.raises(ValueError, match="ig_method='mid'"):
        parse_config("mid:4")


@pytest.mark.parametrize("method", ["gausslegendre", "midpoint", "trapezoid"])
@pytest.mark.parametrize("axis", ["in", "out"])
def test_fast_matches_reference(tiny_llama, tiny_tok, axis, method):
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.down_proj"], neuron_axis=axis, layers=[0, 1])
    targets = targets_from_hparams(tiny_llama, hp)
    fast = attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 4, method=method)
    naive = attribute_request_naive(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, method=method)
    assert _rel(fast, naive) < 1e-4
    riemann = attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 4)
    assert _rel(fast, riemann) > 1e-3  # the method is really used


@pytest.mark.parametrize("method", ["midpoint", "trapezoid"])
def test_completeness_second_order(fact_model_copy, method):
    """Per module, the scores add up to F(W̄) - F(0); the error falls ~4x per doubling of m (O(1/m²))."""
    model, tok = fact_model_copy.model, fact_model_copy.tok
    fact = fact_model_copy.facts[0]
    request = {"prompt": fact["prompt"], "target_new": fact["target_true"]}
    (target,) = targets_from_hparams(model, KNEHyperParams(model_name="x", layers=[1]))
    f_full = target_prob_sum(model, tok, request, 40)
    saved = target.weight.detach().clone()
    with torch.no_grad():
        target.weight.zero_()
    f_zero = target_prob_sum(model, tok, request, 40)
    with torch.no_grad():
        target.weight.copy_(saved)
    expected = f_full - f_zero
    errors = [abs(attribute_request(model, tok, request, [target], m, 40, 64, method=method)[target.name]
                  .sum().item() - expected) for m in (4, 8, 16)]
    right = abs(attribute_request(model, tok, request, [target], 16, 40, 64)[target.name].sum().item() - expected)
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.4 * errors[1] and errors[1] < 0.4 * errors[0], errors  # second order (first: ~0.5)
    assert errors[2] < 0.5 * right, (errors, right)  # better than Eq. 5 at the same m


def test_gauss_legendre_converges_faster(tiny_llama, tiny_tok):
    targets = targets_from_hparams(tiny_llama, KNEHyperParams(model_name="x"))
    converged = attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 256, 40, 256)
    gl3 = _rel(attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 64, method="gausslegendre"),
               converged)
    r3 = _rel(attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 64), converged)
    r20 = _rel(attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 20, 40, 64), converged)
    # measured: GL m=3 0.0011, right Riemann m=3 0.093, m=20 0.013 (the reference's own error is ~0.001)
    assert gl3 < 0.05 * r3 and gl3 < 0.25 * r20, (gl3, r3, r20)


def test_convergence_table_and_resume(tiny_llama, tiny_tok, tmp_path):
    hp = KNEHyperParams(model_name="x", p=10)
    requests = [REQUEST, {"prompt": "Zentor is led by", "target_new": "Alice"}]
    configs = [("riemann_right", 2), ("riemann_right", 20), ("gausslegendre", 2)]
    kw = dict(configs=configs, reference=("riemann_right", 64), p_values=[10, 30], progress=False)
    seen = []
    table = convergence_table(tiny_llama, tiny_tok, requests, hp, str(tmp_path), on_request=seen.append, **kw)
    assert [t["requests"] for t in seen] == [1, 2]
    rows = {(r["method"], r["steps"]): r for r in table["rows"]}
    ref = rows[("riemann_right", 64)]
    assert ref["rel_error"] == 0 and ref["jaccard"] == {"10": 1.0, "30": 1.0}
    assert rows[("gausslegendre", 2)]["rel_error"] < rows[("riemann_right", 20)]["rel_error"]
    assert rows[("riemann_right", 20)]["rel_error"] < rows[("riemann_right", 2)]["rel_error"]
    assert all(r["seconds_per_request"] is not None for r in table["rows"])
    assert table["choice"] == {"method": "gausslegendre", "steps": 2, "baseline": ["riemann_right", 20]}
    again = convergence_table(tiny_llama, tiny_tok, requests, hp, str(tmp_path), **kw)  # all from the cache
    assert all(r["seconds_per_request"] is None for r in again["rows"])
    assert again["rows"] == [dict(r, seconds_per_request=None) for r in table["rows"]]


def test_choose_default_needs_agreement_at_every_p():
    def row(m, s, nodes, j):
        return {"method": m, "steps": s, "nodes": nodes, "jaccard": {"1": j[0], "5": j[1]},
                "jaccard_per_request": {"1": j[0], "5": j[1]}}
    rows = [row("riemann_right", 256, 256, (1, 1)), row("riemann_right", 20, 20, (0.9, 0.9)),
            row("gausslegendre", 2, 2, (0.95, 0.8)), row("gausslegendre", 4, 4, (0.92, 0.95)),
            row("riemann_right", 10, 10, (0.91, 0.99))]
    assert choose_default(rows, ["1", "5"])["steps"] == 4
    assert choose_default(rows[:1], ["1"]) is None
