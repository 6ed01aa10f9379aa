"""ig_method: the quadrature rules, their use in the fast path and the reference, and the convergence check."""

import pytest
import torch

from easyedit_kne import KNEHyperParams
from easyedit_kne.attribution import attribute_request, attribute_request_naive
from easyedit_kne.convergence import choose_default, convergence_table
from easyedit_kne.modules import targets_from_hparams
from easyedit_kne.quadrature import ig_nodes

REQUEST = {"prompt": "The capital of Velaria is", "target_new": "Morn"}


def _flat(scores):
    return torch.cat([scores[n] for n in sorted(scores)])


def _rel(a, b):
    return float((_flat(a) - _flat(b)).norm() / _flat(b).norm())


@pytest.mark.parametrize("method", ["riemann_right", "gausslegendre"])
def test_nodes_integrate_polynomials(method):
    nodes = ig_nodes(method, 4)
    assert len(nodes) == 4 and all(0 < a <= 1 for a, _ in nodes)
    assert sum(w for _, w in nodes) == pytest.approx(1.0)
    for k in range(8):  # ∫_0^1 α^k dα = 1/(k+1): exact up to degree 2m-1 for Gauss-Legendre
        got = sum(w * a ** k for a, w in nodes)
        if method == "gausslegendre":
            assert got == pytest.approx(1 / (k + 1), rel=1e-12)
    assert nodes[-1] == (1.0, 0.25) if method == "riemann_right" else nodes[-1][0] < 1


def test_bad_method_is_rejected():
    with pytest.raises(ValueError, match="ig_method='simpson'.*riemann_right, gausslegendre"):
        KNEHyperParams(model_name="x", ig_method="simpson")
    with pytest.raises(ValueError, match="ig_method"):
        ig_nodes("trapezoid", 3)


@pytest.mark.parametrize("axis", ["in", "out"])
def test_gauss_legendre_fast_matches_reference(tiny_llama, tiny_tok, axis):
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.down_proj"], neuron_axis=axis, layers=[0, 1])
    targets = targets_from_hparams(tiny_llama, hp)
    fast = attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 4, method="gausslegendre")
    naive = attribute_request_naive(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, method="gausslegendre")
    assert _rel(fast, naive) < 1e-4
    riemann = attribute_request(tiny_llama, tiny_tok, REQUEST, targets, 3, 40, 4)
    assert _rel(fast, riemann) > 1e-3  # the method is really used


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
