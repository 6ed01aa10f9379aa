"""The reference attribution: module by module, node by node, autograd on the scaled weight itself.

Independent of the fast path on purpose: it encodes the request itself (the tokens of `prompt` and of
`prompt + " " + target_new`) and computes F from the definition, Σ_j P(y_j | x, y_<j), reading the full
logits position by position. For each node (α_k, w_k) of the quadrature rule it sets W = α_k·W̄, takes
∂F/∂W, and returns per neuron Σ over the neuron's entries of W̄ ⊙ Σ_k w_k ∂F/∂W.
"""

from __future__ import annotations

import torch

from .quadrature import ig_nodes


def encode_for_reference(tok, request, max_length: int, index: int = 0) -> tuple[list[int], int]:
    """(token ids of prompt + " " + target, number of prompt tokens); a long prompt loses its left part,
    keeping a leading BOS."""
    prompt = request["prompt"]
    target = request["target_new"]["str"] if isinstance(request["target_new"], dict) else request["target_new"]
    n_prompt = len(tok(prompt)["input_ids"])
    ids = list(tok(prompt + " " + target)["input_ids"])
    n_target = len(ids) - n_prompt
    if n_target < 1:
        raise ValueError(f"request {index}: target_new={target!r} adds no token after the prompt")
    excess = len(ids) - max_length
    if excess > 0:
        lead = 1 if tok.bos_token_id is not None and ids[0] == tok.bos_token_id else 0
        if n_prompt - lead - excess < 1:
            raise ValueError(f"request {index}: no room for the prompt within max_length={max_length}")
        ids = ids[:lead] + ids[lead + excess:]
        n_prompt -= excess
    return ids, n_prompt


def prob_sum_from_definition(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    """F = Σ_j P(y_j | x, y_<j): the logits at position j-1 predict the token at j."""
    device = model.get_input_embeddings().weight.device
    logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
    total = logits.new_zeros((), dtype=torch.float32)
    for j in range(n_prompt, len(ids)):
        total = total + torch.softmax(logits[j - 1].float(), dim=-1)[ids[j]]
    return total


def attribute_request_naive(model, tok, request, targets, steps: int, max_length: int, index: int = 0,
                            full_backward: bool = False, method: str = "riemann_right") -> dict[str, torch.Tensor]:
    """Reference scores. `full_backward=True` computes the same numbers the way a training loop would write
    Eq. 5: every parameter trainable and `F.backward()`, reading the scaled weight's `.grad` (the cost the
    speed benchmark also reports). Parameter flags and `.grad` are restored afterwards."""
    ids, n_prompt = encode_for_reference(tok, request, max_length, index)
    nodes = ig_nodes(method, steps)
    if not full_backward:
        return _naive_scores(model, ids, n_prompt, targets, nodes, full_backward=False)
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in flags:
            p.requires_grad_(True)
            p.grad = None
        return _naive_scores(model, ids, n_prompt, targets, nodes, full_backward=True)
    finally:
        for p, flag, grad in flags:
            p.grad = grad
            p.requires_grad_(flag)


def _naive_scores(model, ids, n_prompt, targets, nodes, full_backward):
    scores = {}
    for target in targets:
        weight = target.weight
        original = weight.detach().clone()
        was_trainable = weight.requires_grad
        grad_total = torch.zeros_like(original, dtype=torch.float32)
        try:
            weight.requires_grad_(True)
            for alpha, w in nodes:
                with torch.no_grad():
                    weight.copy_(original * alpha)
                with torch.enable_grad():
                    total = prob_sum_from_definition(model, ids, n_prompt)
                    if full_backward:
                        model.zero_grad(set_to_none=True)
                        total.backward()
                        g = weight.grad
                    else:
                        (g,) = torch.autograd.grad(total, weight, allow_unused=True)
                if g is not None:
                    grad_total += w * g.float()
        finally:
            with torch.no_grad():
                weight.copy_(original)
            weight.requires_grad_(was_trainable)
        attr = original.float() * grad_total
        if target.conv1d:
            attr = attr.t()
        scores[target.name] = (attr.sum(0) if target.axis == "in" else attr.sum(1)).cpu()
    return scores
