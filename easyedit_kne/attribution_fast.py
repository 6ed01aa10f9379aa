"""Gradient attribution of neurons (paper Eq. 3-5), the fast path: per-neuron scores of several requests
sharing padded passes (attribute_requests); attribution.py drives it (caching, aggregation).

The fast path never forms a d_out × d_in gradient. With g_k = ∂F/∂(module output) at scale α_k and h the
module input (independent of the module's own scale), per-neuron sums are
    out axis: score(k) = Σ_pos (Σ_k w_k g_k)[k]·(W̄h)[k]
    in axis:  score(j) = Σ_pos h[j]·(W̄ᵀ Σ_k w_k g_k)[j]
Scaling W by α equals scaling the module's bias-free output by α, so all (request, module, node) triples
run as rows of one batch: one "trunk" row per request runs the unscaled model (it is the node α = 1 when
the rule has one), and at the block of module M a trunk row is copied (detached) into one row per node of
M, whose output of M is scaled. Several requests share a pass, right-padded: with a causal model no real
position attends to a later (padding) one, so each request's rows compute exactly what they would alone.
Layers before a module's block run once (in the trunk), backward stops at the branch points,
`ig_batch_size` bounds the rows of one pass and `ig_request_batch` the requests that share one.

In half precision ∂F/∂logit = P·(δ - P) underflows for unlikely targets; each row's F is therefore
divided by its own (detached) value before backward and the gradients multiplied back in fp32 (the rows
are independent, and attribution is linear in F). attribute_request (like attribution.py's callers of
attribute_requests) freezes every parameter for the duration (no weight gradient is built) and restores
the flags afterwards, whatever happens.
"""

from __future__ import annotations

import torch

from .hooks import Hooks
from .model_flags import kept_flags
from .modules import TargetModule, find_blocks
from .quadrature import ig_nodes
from .tokens import encode_requests

_SCALE_F = True  # per-row F scaling against half-precision underflow (a switch for the test that shows why)


class _Encoded:
    """A padded group of requests: input ids without the last token, and per request the positions that
    predict a target token and those tokens."""

    def __init__(self, tok, requests, max_length, device, first_index):
        enc = encode_requests(tok, requests, max_length, first_index=first_index)
        self.lengths = [n - 1 for n in enc.lengths]  # the last token predicts nothing we score
        self.ids = enc.input_ids[:, : max(self.lengths)].to(device)
        self.attention_mask = enc.attention_mask[:, : max(self.lengths)].to(device)
        pos = [enc.target_positions(r) for r in range(len(requests))]
        n_pred = max(len(p) for p in pos)
        self.pred_pos = torch.zeros(len(requests), n_pred, dtype=torch.long)
        self.target_ids = torch.zeros(len(requests), n_pred, dtype=torch.long)
        self.mask = torch.zeros(len(requests), n_pred)
        for r, p in enumerate(pos):
            self.pred_pos[r, : len(p)] = p - 1
            self.target_ids[r, : len(p)] = enc.input_ids[r, p]
            self.mask[r, : len(p)] = 1.0


def _row_prob_sums(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: Σ_j P(y_j) over its target tokens. logits: (B, P, V); target_ids, mask: (B, P)."""
    probs = torch.softmax(logits.float(), dim=-1)
    target_ids, mask = target_ids.to(probs.device), mask.to(probs.device)
    return (probs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1) * mask).sum(-1)


def _neuron_sums(target: TargetModule, h: torch.Tensor, base: torch.Tensor, grad_sum: torch.Tensor
                 ) -> torch.Tensor:
    """h: (T, d_in) module input; base: (T, d_out) = W̄h; grad_sum: (T, d_out) = Σ_k w_k g_k."""
    if target.axis == "out":
        score = (grad_sum * base).sum(0)
    else:
        score = (h * (grad_sum @ target.weight_as_map().float())).sum(0)
    return score.cpu()


def _run_pass(model, blocks, targets, enc: _Encoded, chunk, first):
    """One forward/backward over the trunk rows plus one row per (request, target, node) triple of `chunk`.

    Returns (gradient at each recorded module output, rows of each (request, target) branch, trunk records).
    """
    n_req = enc.ids.shape[0]
    by_layer: dict[int, list] = {}
    for r, t, alpha, weight in chunk:
        by_layer.setdefault(targets[t].layer, []).append((r, t, alpha, weight))
    row_request = list(range(n_req))  # request of every row, in row order
    rows: dict[tuple[int, int], tuple[int, list, list]] = {}  # (request, target) -> (first row, alphas, weights)
    recorded: dict[int, torch.Tensor] = {}
    trunk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # target -> (h, W̄h) of the trunk rows
    head_calls = []

    def per_row(x, index):
        """A batch-first tensor of the trunk rows (e.g. the attention mask), taken for every row."""
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == n_req:
            return x.index_select(0, index.to(x.device))
        if isinstance(x, tuple):
            return tuple(per_row(v, index) for v in x)
        return x

    def block_pre(layer):
        def hook(mod, args, kwargs):
            new = sorted(by_layer.get(layer, []), key=lambda x: (x[1], x[0]))
            in_kwargs = "hidden_states" in kwargs
            hs = kwargs["hidden_states"] if in_kwargs else args[0]
            offset = hs.shape[0]
            if new:
                source = torch.tensor([r for r, _, _, _ in new], device=hs.device)
                hs = torch.cat([hs, hs.index_select(0, source).detach()], 0)
            for r, t, alpha, weight in new:
                start, alphas, weights = rows.setdefault((r, t), (offset, [], []))
                alphas.append(alpha)
                weights.append(weight)
                row_request.append(r)
                offset += 1
            if n_req > 1 and len(row_request) > n_req:  # the model built these for the trunk rows only
                index = torch.tensor(row_request)
                kwargs = {k: per_row(v, index) for k, v in kwargs.items() if k != "hidden_states"}
                args = tuple(per_row(v, index) for v in args[1:]) if not in_kwargs else args
                args = args if in_kwargs else (hs, *args)
            elif not in_kwargs:
                args = (hs, *args[1:])
            if in_kwargs:
                kwargs = dict(kwargs, hidden_states=hs)
            return args, kwargs
        return hook

    def module_hook(t):
        bias = targets[t].bias()

        def hook(mod, args, out):
            if not first and not any(tt == t for _, tt in rows):
                return None
            bias_free = out - bias if bias is not None else out
            if first:
                trunk[t] = (args[0][:n_req].detach().float(), bias_free[:n_req].detach().float())
            scale = torch.ones(out.shape[0], dtype=torch.float32)
            for (_, tt), (start, alphas, _) in rows.items():
                if tt == t:
                    scale[start:start + len(alphas)] = torch.tensor(alphas)
            scale = scale.to(out.device, out.dtype).view(-1, *([1] * (out.dim() - 1)))
            out = bias_free * scale + bias if bias is not None else bias_free * scale
            recorded[t] = out
            return out
        return hook

    def head_pre(mod, args):
        # only the positions that predict a target token go through the output layer
        x = args[0]
        head_calls.append(x.shape)
        index = enc.pred_pos[row_request].to(x.device)
        return (x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1])),)

    with Hooks() as hooks:
        # the trunk needs a graph from its first layer on; no parameter requires grad
        hooks.forward(model.get_input_embeddings(), lambda mod, args, out: out.detach().requires_grad_(True))
        hooks.forward_pre(model.get_output_embeddings(), head_pre)
        for layer in range(len(blocks)) if n_req > 1 else by_layer:
            hooks.forward_pre(blocks[layer], block_pre(layer), with_kwargs=True)
        for t in range(len(targets)):
            hooks.forward(targets[t].module, module_hook(t))
        with torch.enable_grad():
            logits = model(input_ids=enc.ids, attention_mask=enc.attention_mask, use_cache=False).logits
            expected = (len(row_request), enc.pred_pos.shape[1])
            if len(head_calls) != 1 or tuple(logits.shape[:2]) != expected:
                raise RuntimeError(
                    f"KNE attribution: {type(model).__name__}'s forward did not run its output layer "
                    f"get_output_embeddings() once on the hidden states (calls seen: {len(head_calls)}, logits "
                    f"{tuple(logits.shape)}, expected {expected} rows x target positions), so target positions "
                    "cannot be selected; make get_output_embeddings() return the module that computes the logits")
            index = torch.tensor(row_request)
            f = _row_prob_sums(logits, enc.target_ids[index], enc.mask[index])
            # per-row loss scaling against half-precision underflow (rows are independent)
            inv = torch.where(f.detach() > 0, 1.0 / f.detach().clamp_min(1e-38), torch.ones_like(f))
            inv = inv if _SCALE_F else torch.ones_like(f)
            order = sorted(recorded)
            grads = torch.autograd.grad((f * inv).sum(), [recorded[t] for t in order], allow_unused=True)
    out = {}
    for t, g in zip(order, grads, strict=True):
        if g is None:  # the module cannot influence the targets
            out[t] = torch.zeros_like(recorded[t], dtype=torch.float32)
        else:
            unscale = inv[: g.shape[0]].to(g.device).view(-1, *([1] * (g.dim() - 1)))
            out[t] = g.float() / unscale
    return out, rows, trunk


def attribute_requests(model, tok, requests, targets: list[TargetModule], steps: int, max_length: int,
                       batch_size: int = 64, method: str = "riemann_right", first_index: int = 0
                       ) -> list[dict[str, torch.Tensor]]:
    """Fast per-neuron scores of several requests sharing passes (padded); one dict per request."""
    nodes = ig_nodes(method, steps)
    trunk_weight = nodes[-1][1] if nodes[-1][0] == 1.0 else 0.0  # the trunk row is the node α = 1
    branch = [node for node in nodes if node[0] != 1.0]
    device = model.get_input_embeddings().weight.device
    enc = _Encoded(tok, requests, max_length, device, first_index)
    n_req = len(requests)
    if batch_size <= n_req:
        raise ValueError(f"ig_batch_size={batch_size} must exceed the requests in one pass ({n_req})")
    _, blocks = find_blocks(model)
    triples = [(r, t, a, w) for r in range(n_req) for t in range(len(targets)) for a, w in branch]
    per_pass = batch_size - n_req
    chunks = [triples[k:k + per_pass] for k in range(0, len(triples), per_pass)] or [[]]
    trunk, grad_sum = {}, {}
    for n, chunk in enumerate(chunks):
        grads, rows, trunk_records = _run_pass(model, blocks, targets, enc, chunk, first=n == 0)
        for t, (h, base) in trunk_records.items():
            trunk[t] = (h, base, grads[t][:n_req] * trunk_weight)
        for (r, t), (start, _, weights) in rows.items():
            w = torch.tensor(weights, device=grads[t].device).view(-1, 1, 1)
            part = (grads[t][start:start + len(weights)] * w).sum(0)
            grad_sum[(r, t)] = grad_sum[(r, t)] + part if (r, t) in grad_sum else part
        del grads
    out = []
    with torch.no_grad():
        for r in range(n_req):
            n = enc.lengths[r]
            scores = {}
            for t, target in enumerate(targets):
                h, base, g = trunk[t]
                g = g[r, :n] + grad_sum[(r, t)][:n] if (r, t) in grad_sum else g[r, :n]
                scores[target.name] = _neuron_sums(target, h[r, :n], base[r, :n], g)
            out.append(scores)
    return out


def attribute_request(model, tok, request, targets: list[TargetModule], steps: int, max_length: int,
                      batch_size: int = 64, index: int = 0, method: str = "riemann_right"
                      ) -> dict[str, torch.Tensor]:
    """Fast per-neuron attribution scores of one request (`index`: its position, for messages)."""
    with kept_flags(model, freeze=True):
        return attribute_requests(model, tok, [request], targets, steps, max_length, batch_size, method, index)[0]


def target_prob_sum(model, tok, request, max_length: int) -> float:
    """F for one request at the current weights (used by the completeness check)."""
    enc = _Encoded(tok, [request], max_length, model.get_input_embeddings().weight.device, 0)
    with torch.no_grad():
        logits = model(input_ids=enc.ids, use_cache=False).logits
        logits = logits[:, enc.pred_pos[0].to(logits.device)]
        return float(_row_prob_sums(logits, enc.target_ids, enc.mask).sum())
