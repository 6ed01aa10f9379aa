"""Sparse updates of selected neurons, their merge into the weights, and the check that the merged edit holds.

A `SparseUpdate` is a trainable fp32 block P standing for ΔW restricted to some rows (`out` axis) or
columns (`in` axis) of a linear map; a forward hook adds its effect to the module's output.

Half precision. The merge writes round(W + ΔW) into a bf16/fp16 weight, and an update smaller than half a
unit in the last place of W rounds away (bf16 keeps 8 significant bits: |ΔW| < |W|/512 is lost). So for a
half-precision weight the hook trains *through the rounding*: its forward uses exactly the update the merge
will write, round(W_sel + ΔW) − W_sel (in fp32, exact), with the gradient passed straight through to P. Loss
and early stopping then see the merged weights' update; small steps still accumulate in P until they cross a
rounding boundary.

After the merge, `merge_checked` evaluates the edit on the merged model itself (no hook): the loss and
target-token accuracy of the edit requests. What remains different from the hooked model (the hook adds its
output in the activation dtype; the merged matmul rounds differently) can still tip an edit that stopped just
below its threshold; then training continues from the merged model on the same neurons, with fresh blocks,
for up to `MAX_REPAIR_ROUNDS` rounds, and each round is merged in turn. A warning says so if the edit
still fails. Everything is recorded in EditStats (`merged_loss`, `merged_accuracy`, `merged_min_prob`,
`repair_rounds`, `edit_holds`). Any failure puts back every slice written by any round.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .modules import is_conv1d
from .tokens import target_logprobs

MAX_REPAIR_ROUNDS = 2
HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class SparseUpdate:
    name: str
    module: torch.nn.Module
    axis: str
    index: torch.Tensor  # selected neurons, on the module's device
    block: torch.Tensor  # P, fp32, trainable
    scale: float  # α/√n
    base: torch.Tensor | None = None  # fp32 copy of W's selected slices (block layout); half precision only
    combine: torch.Tensor | None = None  # (len(index), rows of P) 0/1: several trained rows per neuron (FiNE)

    def __post_init__(self):
        weight = self.module.weight
        if self.base is None and weight.dtype in HALF_DTYPES:
            with torch.no_grad():
                w = weight.t() if is_conv1d(self.module) else weight  # the map [d_out, d_in]
                sel = w.index_select(1 if self.axis == "in" else 0, self.index)
                self.base = (sel.t() if self.axis == "in" else sel).float().contiguous()

    def delta(self) -> torch.Tensor:
        """ΔW of the selected neurons (len(index) × other): scale·P, rows summed by `combine` if given."""
        block = self.block if self.combine is None else self.combine @ self.block
        return block * self.scale

    def effective_block(self) -> torch.Tensor:
        """scale·P, or for a half-precision weight the update the merge will actually write (straight-through)."""
        delta = self.delta()
        if self.base is None:
            return delta
        dtype = self.module.weight.dtype
        rounded = (self.base + delta.detach()).to(dtype).float() - self.base
        return delta + (rounded - delta.detach())

    def delta_output(self, x: torch.Tensor) -> torch.Tensor:
        block = self.effective_block()
        if self.axis == "in":
            return x.index_select(-1, self.index).float() @ block
        return x.float() @ block.t()

    def add_to_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self.delta_output(x).to(y.dtype)
        if self.axis == "in":
            return y + delta
        return y.index_add(-1, self.index, delta)

    def storage_slices(self):
        """(dim, delta) to add into the stored weight along `dim` at `index`."""
        delta = self.delta().detach()  # n × other
        transposed = is_conv1d(self.module)  # Conv1D stores [d_in, d_out]
        # map layout [d_out, d_in]: in axis -> columns (dim 1), out axis -> rows (dim 0)
        dim = 1 if self.axis == "in" else 0
        if transposed:
            dim = 1 - dim
        return dim, (delta.t() if dim == 1 else delta)


def _restore(written) -> None:
    with torch.no_grad():
        for weight, dim, index, old in reversed(written):
            weight.index_copy_(dim, index, old)


def merge_updates(model, updates: list[SparseUpdate], written: list | None = None) -> None:
    """Add each update into its weight in place (fp32 accumulation); all or nothing.

    With `written`, the (weight, dim, index, old slice) of every write is appended to it and nothing is put
    back on failure (the caller does, see `merge_checked`).
    """
    own = written is None
    written = [] if own else written
    try:
        with torch.no_grad():
            for u in updates:
                weight = u.module.weight
                dim, delta = u.storage_slices()
                old = weight.index_select(dim, u.index)
                new = (old.float() + delta.to(weight.device)).to(weight.dtype)
                if not bool(torch.isfinite(new).all()) and bool(torch.isfinite(old).all()):
                    raise FloatingPointError(
                        f"KNE merge: {u.name}.weight would hold non-finite values in {weight.dtype} "
                        "(overflow); lower lr or alpha; the model was left unchanged")
                written.append((weight, dim, u.index, old))
                weight.index_copy_(dim, u.index, new)
    except BaseException:
        if own:
            _restore(written)
        raise


@dataclass
class EditCheck:
    """The edit requests on a model without hooks."""

    loss: float  # mean NLL of each request's target tokens, averaged over requests (KNE's training loss)
    accuracy: float  # share of target tokens that are the argmax at their position
    min_prob: float  # the lowest probability of any target token


@torch.no_grad()
def evaluate_edit(model, batch) -> EditCheck:
    was_training = model.training
    model.eval()
    try:
        device = model.get_input_embeddings().weight.device
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    finally:
        model.train(was_training)
    logp, mask = target_logprobs(logits, batch.labels)
    loss = -(logp.sum(1) / mask.sum(1).clamp(min=1)).mean()
    targets = batch.labels[:, 1:].to(logits.device)
    hits = (logits[:, :-1].argmax(-1) == targets) & mask
    min_prob = logp.masked_fill(~mask, 0.0).min().exp()
    return EditCheck(float(loss), float(hits.sum() / mask.sum()), float(min_prob))


def record(stats, check: EditCheck) -> None:
    stats.merged_loss, stats.merged_accuracy, stats.merged_min_prob = check.loss, check.accuracy, check.min_prob


def merge_checked(model, batch, updates: list[SparseUpdate], holds, retrain, stats, return_orig_weights: bool,
                  method: str) -> dict:
    """Merge, evaluate the merged model, and if `holds(check)` is false while training had reached its goal
    (`stats.trained_holds`), train again (`retrain()` returns new, trained updates on the merged model) and
    merge, at most MAX_REPAIR_ROUNDS times; warn if the edit still does not hold.

    Returns EasyEdit's weights_copy ({param name: original tensor}) when `return_orig_weights`. A failure in
    any round puts back every slice written before it is re-raised.
    """
    weights_copy = {}
    if return_orig_weights:
        weights_copy = {f"{u.name}.weight": u.module.weight.detach().clone() for u in updates}
    names = {u.name for u in updates}
    dtype = updates[0].module.weight.dtype if updates else None
    written: list = []
    try:
        merge_updates(model, updates, written)
        check = evaluate_edit(model, batch)
        record(stats, check)
        while stats.trained_holds and not holds(check) and stats.repair_rounds < MAX_REPAIR_ROUNDS:
            stats.repair_rounds += 1
            updates = [u for u in retrain() if u.name in names]
            merge_updates(model, updates, written)
            check = evaluate_edit(model, batch)
            record(stats, check)
    except BaseException:
        _restore(written)
        raise
    stats.edit_holds = bool(holds(check))
    if stats.trained_holds and not stats.edit_holds:
        warnings.warn(
            f"{method}: the edit held during training but not on the merged {dtype} weights: loss {check.loss:.4g}, "
            f"target-token accuracy {check.accuracy:.3f}, lowest target probability {check.min_prob:.3g}, after "
            f"{stats.repair_rounds} more training round(s) on the merged model. Raise lr or the number of steps, "
            "or edit the model in float32", stacklevel=3)
    return weights_copy
