"""FiNE localization: the FFN neurons that contribute most to the token the unedited model predicts.

Definitions (Pan et al., ICLR 2025, §3.2; the authors' `get_top_neurons` in
github.com/opanhw/FiNE, easyeditor/models/fine/utils.py, is what we follow):

* Text and positions. A request is teacher-forced as `f"{prompt} {target_new}"` (`tokens.encode_requests`,
  EasyEdit's convention); the target tokens y_1..y_s are the tokens after those of `prompt`. Position
  q_j is the position whose output predicts y_j (the last prompt position for y_1, the position of
  y_{j-1} for j > 1).
* Predicted tokens. t_j = argmax of the *unedited* model's logits at q_j (with the target fed in). For a
  counterfactual edit t_j is usually the old answer's token: FiNE locates the neurons that currently
  carry the fact, not the new target.
* Activations. a^l = the input of block l's value module (`down_proj`, GPT-2 `mlp.c_proj`, GPT-J
  `fc_out`, GPT-NeoX `dense_4h_to_h`), i.e. the activated intermediate units of the FFN, at q_j.
* Contribution score of neuron i of layer l for target token j:

      c_{l,i,j} = a^l_i(q_j) · ( W_down^l[:, i] · W_U[:, t_j] )

  with W_down^l[:, i] the value vector of neuron i (a column of the map; a row of GPT-2's transposed
  Conv1D storage) and W_U[:, t] the output embedding of t (the row t of `lm_head.weight`).
* Final norm: ignored, as in the paper's logit-lens contribution and in the authors' code (which reads
  `lm_head.weight` directly and never uses its `ln_f_module` setting). The norm's 1/RMS (or 1/std)
  factor is one positive scalar per position, so it cannot change the ranking of neurons for one target
  token; only its elementwise weight (and LayerNorm's mean-centering) could, and leaving both out keeps
  the score a plain product of the neuron's value vector with the unembedding, the same for every
  architecture. The bias of the value module and of `lm_head` is not attributed to any neuron.
* Selection. For each target token j of each request, the `neuron_num` (layer, neuron) pairs with the
  largest c_{l,i,j} over all blocks except the last `last_layer` ones (ties: lower layer, then lower
  index). The edited set of a module is the union of its neurons over all target tokens and requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..hooks import Hooks
from ..modules import TargetModule, check_not_offloaded, find_blocks, find_target_modules, is_linear_map, model_device
from ..tokens import EncodedBatch, encode_requests
from .hparams import VALUE_MODULE_CANDIDATES


def resolve_value_module(model, value_module: str = "auto") -> str:
    """The value module's suffix inside a block: `value_module` itself, or for "auto" the first of
    VALUE_MODULE_CANDIDATES that is a linear map in block 0."""
    if value_module != "auto":
        return value_module
    _, blocks = find_blocks(model)
    mods = dict(blocks[0].named_modules())
    for suffix in VALUE_MODULE_CANDIDATES:
        if suffix in mods and is_linear_map(mods[suffix]):
            return suffix
    raise ValueError(
        f"value_module='auto': {type(model).__name__} has none of {', '.join(VALUE_MODULE_CANDIDATES)} in "
        "its blocks; set value_module to the suffix of the FFN output projection inside a block")


def eligible_value_modules(model, value_module: str = "auto", last_layer: int = 0) -> list[TargetModule]:
    """The value modules of blocks 0 .. n_blocks - last_layer - 1, neuron axis "in" (FFN neurons)."""
    _, blocks = find_blocks(model)
    n_layers = len(blocks)
    if not 0 <= last_layer < n_layers:
        raise ValueError(
            f"last_layer={last_layer} is out of range: allowed 0 <= last_layer < {n_layers} "
            f"(the model has {n_layers} blocks; at least one must stay editable)")
    suffix = resolve_value_module(model, value_module)
    return find_target_modules(model, [suffix], list(range(n_layers - last_layer)), neuron_axis="in")


def unembedding(model) -> torch.Tensor:
    """W_U as [vocab, hidden] (`lm_head.weight`; tied embeddings included)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__}: FiNE needs an output embedding (lm_head) to score neurons")
    return head.weight


@torch.no_grad()
def capture_value_inputs(model, batch: EncodedBatch, modules: list[TargetModule]):
    """One forward pass of the unedited model: (logits (B, T, V), [input of each module, (B, T, d_in)]).

    The hooks only read the modules' inputs, so the logits are the unedited model's.
    """
    captured: list = [None] * len(modules)

    def grab(k):
        def hook(mod, args):
            captured[k] = args[0].detach()
        return hook

    was_training = model.training
    model.eval()  # as the authors: no dropout in the scores nor in the original distribution of the KL term
    try:
        with Hooks() as hooks:
            for k, m in enumerate(modules):
                hooks.forward_pre(m.module, grab(k))
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    finally:
        model.train(was_training)
    missing = [m.name for m, c in zip(modules, captured, strict=True) if c is None]
    if missing:
        raise RuntimeError(f"FiNE: the forward pass never called {missing}")
    return logits.detach(), captured


def contribution_scores(modules: list[TargetModule], unembed: torch.Tensor, activations: torch.Tensor,
                        tokens: torch.Tensor) -> torch.Tensor:
    """c[j, l, i] = activations[l, j, i] · (W_down^l[:, i] · W_U[:, tokens[j]]), in float32.

    `activations`: (n_modules, n_tokens, d_in), the value modules' inputs at the positions predicting each
    token; `tokens`: (n_tokens,) the token ids scored; `unembed`: [vocab, hidden]. Returns
    (n_tokens, n_modules, d_in) on the CPU.
    """
    out = []
    for k, m in enumerate(modules):
        w = m.weight_as_map()  # [hidden, d_in]
        u = unembed.detach()[tokens.to(unembed.device)].to(w.device, torch.float32)  # (n_tokens, hidden)
        if u.shape[1] != w.shape[0]:
            raise ValueError(f"{m.name}: output size {w.shape[0]} differs from the unembedding's {u.shape[1]}")
        proj = u @ w.detach().float()  # (n_tokens, d_in): W_down[:, i] · W_U[:, t]
        out.append((activations[k].to(w.device, torch.float32) * proj).cpu())
    return torch.stack(out, dim=1)


def top_neurons(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the k largest scores over (layer, neuron): (indices (n_tokens, k, 2), values (n_tokens, k)).

    Deterministic: ties go to the lower layer, then the lower neuron index.
    """
    n_tokens, n_layers, d_in = scores.shape
    if k > n_layers * d_in:
        raise ValueError(f"neuron_num={k} is out of range: allowed 1..{n_layers * d_in} "
                         f"({n_layers} editable layers × {d_in} neurons)")
    values, order = torch.sort(scores.reshape(n_tokens, -1), dim=1, descending=True, stable=True)
    order, values = order[:, :k], values[:, :k]
    return torch.stack([order // d_in, order % d_in], dim=-1), values


@dataclass
class FiNELocation:
    """What localization found. Layer numbers are block indices."""

    modules: list  # TargetModule of every editable block, in block order
    predicted: list  # per request: the unedited model's argmax token at each target position (t_j)
    top: list  # per request: LongTensor (n_target_tokens, neuron_num, 2) of (layer, neuron); the editable
    #            modules are blocks 0..n-1-last_layer, so a module's position in `modules` is its block index
    top_scores: list  # per request: (n_target_tokens, neuron_num) contribution scores
    neurons: dict = field(default_factory=dict)  # module name -> sorted unique neuron indices (union)
    logits: torch.Tensor | None = None  # the unedited model's logits on the batch (B, T, V)

    @property
    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    def layers(self) -> list[int]:
        by_name = {m.name: m.layer for m in self.modules}
        return sorted(by_name[n] for n, v in self.neurons.items() if len(v))


def predicting_positions(batch: EncodedBatch, b: int) -> torch.Tensor:
    """Positions whose logits predict the target tokens of request b (q_1..q_s)."""
    return batch.target_positions(b).cpu() - 1


@torch.no_grad()
def locate(model, tok, requests, hparams, batch: EncodedBatch | None = None) -> FiNELocation:
    """Score and select FiNE's neurons for `requests` (see the module docstring)."""
    if batch is None:
        batch = encode_requests(tok, requests, hparams.max_length)
    batch = batch.to(model_device(model))
    modules = eligible_value_modules(model, hparams.value_module, hparams.last_layer)
    check_not_offloaded([(m.name, m.module) for m in modules], "FiNE")
    logits, inputs = capture_value_inputs(model, batch, modules)
    if not torch.isfinite(logits).all():
        raise FloatingPointError("FiNE: the unedited model's logits are not finite; nothing was edited")
    unembed = unembedding(model)
    predicted, top, top_scores = [], [], []
    selected: dict[int, set] = {}
    for b in range(batch.input_ids.shape[0]):
        pos = predicting_positions(batch, b)
        tokens = logits[b, pos.to(logits.device)].argmax(-1)
        acts = torch.stack([x[b, pos.to(x.device)].to(inputs[0].device) for x in inputs])
        scores = contribution_scores(modules, unembed, acts, tokens)
        if not torch.isfinite(scores).all():
            raise FloatingPointError("FiNE: non-finite contribution scores; nothing was edited")
        idx, val = top_neurons(scores, hparams.neuron_num)
        predicted.append(tokens.tolist())
        top.append(idx)
        top_scores.append(val)
        for layer_k, neuron in idx.reshape(-1, 2).tolist():
            selected.setdefault(layer_k, set()).add(neuron)
    neurons = {modules[k].name: torch.tensor(sorted(v), dtype=torch.long) for k, v in sorted(selected.items())}
    return FiNELocation(modules, predicted, top, top_scores, neurons, logits)


__all__ = ["FiNELocation", "capture_value_inputs", "contribution_scores", "eligible_value_modules", "locate",
           "predicting_positions", "resolve_value_module", "top_neurons", "unembedding"]
