"""Gradient attribution of neurons (paper Eq. 3-5): per-request scores (cached), aggregated over requests.

For one request, F(W) = sum over target tokens of P(y_j | x, y_<j) (probabilities). For a target module
with weight W̄, scaled to α·W̄ (bias not scaled, all else unchanged), the attribution integral (Eq. 4)
is approximated by a quadrature rule (`ig_method`, see quadrature.py; `riemann_right` is Eq. 5):

    A(W̄) = W̄ ⊙ Σ_k w_k ∂F/∂W |_{W=α_k·W̄}

and a neuron's score is the sum of A over its entries (a row of W for the `out` axis, a column for `in`).

The scores come from the fast path (attribution_fast.py: all (request, module, node) triples as rows of
shared passes, no d_out × d_in gradient) or from the naive reference (attribution_naive.py: autograd on the
scaled weight itself). Parameters are frozen during attribution (no weight gradient is built); their
flags are restored afterwards, whatever happens.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .attribution_fast import attribute_request, attribute_requests, target_prob_sum
from .attribution_naive import attribute_request_naive
from .model_flags import kept_flags
from .modules import targets_from_hparams
from .tokens import check_encodable, check_requests

__all__ = ["aggregate", "attribute", "attribute_per_request", "attribute_request", "attribute_requests",
           "attribute_request_naive", "target_prob_sum"]

AGGREGATIONS = {
    "max": lambda s: s.max(dim=0).values,
    "mean": lambda s: s.mean(dim=0),
    "sum": lambda s: s.sum(dim=0),
}


def aggregate(per_request: list[dict], how: str) -> dict[str, torch.Tensor]:
    if how not in AGGREGATIONS:
        raise ValueError(f"score_aggregation={how!r} is not allowed: choose one of {', '.join(AGGREGATIONS)}")
    names = per_request[0].keys()
    return {n: AGGREGATIONS[how](torch.stack([s[n] for s in per_request])) for n in names}


def attribute_per_request(model, tok, requests, hparams, method: str = "fast", cache=None,
                          progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """Per-request scores, read from / written to `cache` (a ScoreCache) when given."""
    hparams.validate()  # fields may have been changed since construction
    requests = check_requests(requests)
    if method not in ("fast", "naive"):
        raise ValueError(f"method={method!r}: choose 'fast' or 'naive'")
    targets = targets_from_hparams(model, hparams)
    check_encodable(tok, requests, hparams.max_length)
    out: list = [None] * len(requests)
    keys = [cache.key(r, targets, hparams) if cache is not None else None for r in requests]
    todo = []
    for i, key in enumerate(keys):
        out[i] = cache.get(key, targets) if cache is not None else None
        if out[i] is None:
            todo.append(i)
    # similar lengths share a pass (less padding)
    todo.sort(key=lambda i: len(tok(requests[i]["prompt"])["input_ids"]))
    group = 1 if method == "naive" else min(hparams.ig_request_batch, hparams.ig_batch_size - 1)
    groups = [todo[k:k + group] for k in range(0, len(todo), group)]
    bar = tqdm(total=len(todo), desc="KNE attribution", disable=not progress or len(todo) < 2)
    with kept_flags(model, freeze=True):
        for idx in groups:
            if method == "fast":
                scores = attribute_requests(model, tok, [requests[i] for i in idx], targets, hparams.ig_steps,
                                            hparams.max_length, hparams.ig_batch_size, hparams.ig_method, idx[0])
            else:
                scores = [attribute_request_naive(model, tok, requests[idx[0]], targets, hparams.ig_steps,
                                                  hparams.max_length, index=idx[0], method=hparams.ig_method)]
            for i, s in zip(idx, scores, strict=True):
                out[i] = s
                if cache is not None:
                    cache.put(keys[i], s, requests[i])
            bar.update(len(idx))
    bar.close()
    return out


def attribute(model, tok, requests, hparams, method: str = "fast", cache=None, progress: bool = True
              ) -> dict[str, torch.Tensor]:
    """Per-neuron scores {full module name: float32 CPU tensor}, aggregated over the requests."""
    per_request = attribute_per_request(model, tok, requests, hparams, method, cache, progress)
    return aggregate(per_request, hparams.score_aggregation)
