"""apply_kne_to_model: train a sparse update of the ensemble's neurons, then merge it into the weights.

For a module with n selected neurons, a trainable block P (n × the other dimension, zero-initialized)
stands for ΔW restricted to the ensemble's rows (`out` axis) or columns (`in` axis); the module computes
W + (α/√n)·ΔW. The update is applied as a hook on the module's output in O(n·d) per token:
    in axis:  y += (α/√n) · x[..., idx] @ P              (P: n × d_out)
    out axis: y[..., idx] += (α/√n) · x @ Pᵀ              (P: n × d_in)
Only P trains (Adam on the NLL of the target tokens of all requests together, early stop below
t_loss). Then the update is added into the weights in place (accumulated in fp32) and every hook is
removed: the edited model is an ordinary model. Until the merge the weights are never touched, and a
failure during the merge puts back the slices already written. Whatever fails (bad input, a non-finite
loss, out of memory, KeyboardInterrupt), the model is left as it was: weights, hooks, requires_grad and
training flags; an out-of-memory error is re-raised with a message that says so and names the knobs.
"""

from __future__ import annotations

import copy as copy_module
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .ensemble import KnowledgeNeuronalEnsemble
from .hooks import Hooks
from .localization import load_ensemble_once, localized_ensemble
from .modules import is_conv1d
from .tokens import check_requests, encode_requests, logprobs_at, prediction_positions

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda's


@dataclass
class SparseUpdate:
    name: str
    module: torch.nn.Module
    axis: str
    index: torch.Tensor  # selected neurons, on the module's device
    block: torch.Tensor  # P, fp32, trainable
    scale: float  # α/√n

    def delta_output(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == "in":
            return (x.index_select(-1, self.index).float() @ self.block) * self.scale
        return (x.float() @ self.block.t()) * self.scale

    def add_to_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = self.delta_output(x).to(y.dtype)
        if self.axis == "in":
            return y + delta
        return y.index_add(-1, self.index, delta)

    def storage_slices(self):
        """(dim, delta) to add into the stored weight along `dim` at `index`."""
        delta = (self.block.detach() * self.scale)  # n × other
        transposed = is_conv1d(self.module)  # Conv1D stores [d_in, d_out]
        # map layout [d_out, d_in]: in axis -> columns (dim 1), out axis -> rows (dim 0)
        dim = 1 if self.axis == "in" else 0
        if transposed:
            dim = 1 - dim
        return dim, (delta.t() if dim == 1 else delta)


@dataclass
class EditStats:
    localize_seconds: float = 0.0
    train_seconds: float = 0.0
    steps: int = 0
    losses: list = field(default_factory=list)
    num_neurons: int = 0
    parameter_fraction: float = 0.0


@contextmanager
def frozen(model):
    """All model parameters frozen for the duration (so backward reaches only the KNE blocks)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def build_updates(model, ensemble: KnowledgeNeuronalEnsemble, alpha: float) -> list[SparseUpdate]:
    modules = dict(model.named_modules())
    updates = []
    for name, idx in ensemble.neurons.items():
        if len(idx) == 0:
            continue
        module = modules[name]
        d_out, d_in = ensemble.module_shapes[name]
        axis = ensemble.axes[name]
        other = d_out if axis == "in" else d_in
        device = module.weight.device
        block = torch.zeros(len(idx), other, dtype=torch.float32, device=device, requires_grad=True)
        updates.append(SparseUpdate(name, module, axis, idx.to(device), block, alpha / math.sqrt(len(idx))))
    return updates


def _hook(update: SparseUpdate):
    def hook(mod, args, out):
        return update.add_to_output(args[0], out)
    return hook


def train_updates(model, batch, updates: list[SparseUpdate], hparams, stats: EditStats,
                  progress: bool = False) -> None:
    device = model.get_input_embeddings().weight.device
    batch = batch.to(device)
    params = [u.block for u in updates]
    opt = torch.optim.Adam(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
    positions = prediction_positions(batch.labels)
    with frozen(model), Hooks() as hooks, torch.enable_grad():
        for u in updates:
            hooks.forward(u.module, _hook(u))
        # the output layer runs only where a target token is predicted
        hooks.forward_pre(model.get_output_embeddings(), lambda mod, args: (args[0][:, positions.to(args[0].device)],))
        for step in tqdm(range(hparams.num_steps), desc="KNE edit", leave=False, disable=not progress):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            logp, mask = logprobs_at(logits, batch.labels, positions)
            # mean NLL of each request's target tokens, averaged over requests
            loss = -(logp.sum(1) / mask.sum(1).clamp(min=1)).mean()
            value = float(loss.detach())
            stats.losses.append(value)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"KNE edit: the loss became {value} at step {step}; lower lr (now {hparams.lr}) "
                    "or alpha; the model was left unchanged")
            if value < hparams.t_loss:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.steps = step + 1
    # a non-finite gradient at the last step would otherwise reach the weights unseen by the loss check
    bad = [u.name for u in updates if not bool(torch.isfinite(u.block).all())]
    if bad:
        raise FloatingPointError(
            f"KNE edit: the update of {', '.join(bad)} became non-finite after {stats.steps} steps; lower lr "
            f"(now {hparams.lr}) or alpha; the model was left unchanged")


def merge_updates(model, updates: list[SparseUpdate]) -> None:
    """Add each update into its weight in place (fp32 accumulation); all or nothing."""
    written = []
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
        with torch.no_grad():
            for weight, dim, index, old in reversed(written):
                weight.index_copy_(dim, index, old)
        raise


def prepare_edit(model, tok, requests, hparams, copy: bool):
    """Checks and encodes everything before any weight is touched; deep-copies the model with `copy`."""
    hparams.validate()
    requests = check_requests(requests)
    batch = encode_requests(tok, requests, hparams.max_length)
    if copy:
        model = copy_module.deepcopy(model)
    torch.manual_seed(hparams.seed)
    return model, requests, batch


def merge_with_copy(model, updates: list[SparseUpdate], return_orig_weights: bool) -> dict:
    """Merge the updates; EasyEdit's weights_copy ({param name: original tensor}) when asked for."""
    weights_copy = {}
    if return_orig_weights:
        weights_copy = {f"{u.name}.weight": u.module.weight.detach().clone() for u in updates}
    merge_updates(model, updates)
    return weights_copy


def resolve_ensemble(model, tok, requests, hparams, ensemble, stats: EditStats, progress: bool):
    # once per localization set / ensemble file in this process (an editor loop calls this per edit)
    if ensemble is None and hparams.ensemble_path:
        ensemble = load_ensemble_once(hparams.ensemble_path)
    if isinstance(ensemble, (str, bytes)) or hasattr(ensemble, "__fspath__"):
        ensemble = load_ensemble_once(ensemble)
    if ensemble is None:
        ensemble, stats.localize_seconds = localized_ensemble(model, tok, hparams, requests, progress)
    ensemble.check_model(model)
    if ensemble.num_neurons == 0:
        raise ValueError("KNE: the ensemble selected no neuron (no positive attribution score); "
                         "raise p or check the localization requests")
    return ensemble


def apply_kne_to_model(model, tok, requests, hparams, copy: bool = False, return_orig_weights: bool = False,
                       keep_original_weight: bool = False, ensemble=None, stats: EditStats | None = None,
                       progress: bool = False, **kwargs):
    """EasyEdit entry point: returns (edited_model, weights_copy).

    `ensemble`: a KnowledgeNeuronalEnsemble or a path to a saved one (else `hparams.ensemble_path`,
    else localization on the configured localization set or on `requests`). `weights_copy` maps each
    modified parameter name to its original tensor when `return_orig_weights`; copying them back
    restores the model bit for bit. `keep_original_weight` is accepted for EasyEdit's signature; with
    `copy=True` the input model is left untouched. Other EasyEdit kwargs are ignored.
    """
    model, requests, batch = prepare_edit(model, tok, requests, hparams, copy)
    stats = stats if stats is not None else EditStats()
    phase = "localization"
    try:
        ensemble = resolve_ensemble(model, tok, requests, hparams, ensemble, stats, progress)
        stats.num_neurons = ensemble.num_neurons
        stats.parameter_fraction = ensemble.parameter_fraction
        phase = "training"
        updates = build_updates(model, ensemble, hparams.alpha)
        start = time.perf_counter()
        train_updates(model, batch, updates, hparams, stats, progress)
        stats.train_seconds = time.perf_counter() - start
        phase = "merge"
        weights_copy = merge_with_copy(model, updates, return_orig_weights)
    except OutOfMemoryError as err:
        raise OutOfMemoryError(
            f"KNE ran out of memory during {phase} ({str(err).strip() or type(err).__name__}); the model was "
            f"left unchanged. Lower ig_batch_size (now {hparams.ig_batch_size}) for localization, or edit "
            f"fewer requests at once (batch_size; this batch has {len(requests)}) or lower max_length "
            f"(now {hparams.max_length}) for training.") from err
    return model, weights_copy
