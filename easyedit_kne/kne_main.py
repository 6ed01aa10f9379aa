"""apply_kne_to_model: train a sparse update of the ensemble's neurons, then merge it into the weights.

For a module with n selected neurons, a trainable block P (n × the other dimension, zero-initialized;
kaiming-uniform with init=kaiming)
stands for ΔW restricted to the ensemble's rows (`out` axis) or columns (`in` axis); the module computes
W + (α/√n)·ΔW. The update is applied as a hook on the module's output in O(n·d) per token:
    in axis:  y += (α/√n) · x[..., idx] @ P              (P: n × d_out)
    out axis: y[..., idx] += (α/√n) · x @ Pᵀ              (P: n × d_in)
Only P trains (Adam or AdamW on the NLL of the target tokens of all requests together, and with context_prefixes
also after neutral prefixes, contexts.py; early stop below t_loss). Then the update is added into the weights in
place (accumulated in fp32) and every hook is removed: the edited model is an ordinary model. Until the merge
the weights are never touched, and a failure during the merge puts back the slices already written. Whatever
fails (bad input, a non-finite loss, out of memory, KeyboardInterrupt), the model is left as it was: weights,
hooks, requires_grad and training flags; an out-of-memory error is re-raised with a message that says so and
names the knobs.
"""

from __future__ import annotations

import copy as copy_module
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .contexts import context_requests
from .edit_artifact import EditRecorder
from .ensemble import KnowledgeNeuronalEnsemble
from .hooks import Hooks
from .localization import load_ensemble_once, localized_ensemble
from .merge import SparseUpdate, merge_checked, merge_updates
from .model_flags import kept_flags
from .modules import check_not_offloaded, targets_from_hparams
from .subject_variants import variant_requests
from .tokens import IGNORE_INDEX, check_requests, encode_requests, logprobs_at, prediction_positions

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda's


@dataclass
class EditStats:
    localize_seconds: float = 0.0
    train_seconds: float = 0.0
    steps: int = 0
    losses: list = field(default_factory=list)
    num_neurons: int = 0
    parameter_fraction: float = 0.0
    # the edit on the merged weights (merge.py): training's goal reached with the hooks, then on the merged model
    trained_holds: bool = False
    merged_loss: float | None = None
    merged_accuracy: float | None = None
    merged_min_prob: float | None = None
    repair_rounds: int = 0  # training rounds run on the merged model because the merge lost the edit
    edit_holds: bool | None = None


def init_block(block: torch.Tensor, axis: str, init: str) -> None:
    """`zero`: ΔW starts at zero (the paper). `kaiming`: kaiming-uniform (a=√5, nn.Linear's default) of the
    authors' trainable linear map: (n × d_in) for rows (`out`), (d_out × n) for columns (`in`)."""
    if init == "kaiming":
        with torch.no_grad():
            torch.nn.init.kaiming_uniform_(block if axis == "out" else block.t(), a=math.sqrt(5))


def build_updates(model, ensemble: KnowledgeNeuronalEnsemble, alpha: float, init: str = "zero"
                  ) -> list[SparseUpdate]:
    modules = dict(model.named_modules())
    check_not_offloaded([(name, modules[name]) for name, idx in ensemble.neurons.items() if len(idx)], "KNE")
    updates = []
    for name, idx in ensemble.neurons.items():
        if len(idx) == 0:
            continue
        module = modules[name]
        d_out, d_in = ensemble.module_shapes[name]
        axis = ensemble.axes[name]
        other = d_out if axis == "in" else d_in
        device = module.weight.device
        block = torch.zeros(len(idx), other, dtype=torch.float32, device=device)
        init_block(block, axis, init)
        block.requires_grad_(True)
        updates.append(SparseUpdate(name, module, axis, idx.to(device), block, alpha / math.sqrt(len(idx))))
    return updates


def _hook(update: SparseUpdate):
    def hook(mod, args, out):
        return update.add_to_output(args[0], out)
    return hook


def logits_at_positions(model, logits: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
    """The logits at `positions`, whether or not the output layer's pre-hook ran.

    A model whose forward never calls `get_output_embeddings()` (some remote-code models compute the head
    themselves) returns logits at every position: they are indexed here. Any other length is an error.
    """
    if logits.shape[1] == len(positions):
        return logits
    if logits.shape[1] == length:
        return logits[:, positions.to(logits.device)]
    raise RuntimeError(
        f"KNE edit: {type(model).__name__} returned logits for {logits.shape[1]} positions, expected "
        f"{len(positions)} (the output layer run at the target positions only) or {length} (every position); "
        "its get_output_embeddings() must return the module that computes the logits. The model was left "
        "unchanged")


def make_optimizer(params, hparams):
    cls = torch.optim.AdamW if getattr(hparams, "optimizer", "adam") == "adamw" else torch.optim.Adam
    return cls(params, lr=hparams.lr, weight_decay=hparams.weight_decay)


def _columns(of: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    return torch.searchsorted(within, of.to(within.device))


def _target_hits(logits, labels, positions) -> bool:
    """Every target token is the argmax (`logits` at `positions`, which predict labels at positions + 1)."""
    targets = labels[:, positions + 1]
    return bool(((logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)).all())


def train_updates(model, batch, updates: list[SparseUpdate], hparams, stats: EditStats,
                  progress: bool = False, tok=None, requests=None) -> None:
    """Train the blocks on the mean target NLL (+ the KL terms of regularizers.py when their weights are set,
    with the null-space projection of nullspace.py when `hparams.nullspace`); `tok`/`requests` are needed
    only by kl_subject_weight and nullspace."""
    from .regularizers import Regularizer

    device = model.get_input_embeddings().weight.device
    batch = batch.to(device)
    params = [u.block for u in updates]
    positions = prediction_positions(batch.labels)
    stats.trained_holds = False
    reg = Regularizer(tok, requests or [], batch, hparams, device)
    if (reg.subject_weight or reg.essence_weight) and (tok is None or requests is None):
        raise ValueError("kl_subject_weight and kl_essence_weight need the tokenizer and the requests (pass tok= "
                         "and requests=)")
    projs = {}
    if getattr(hparams, "nullspace", False):
        from .nullspace import project_, projectors

        projs = projectors(model, tok, updates, hparams)
        project_(updates, projs)
    # the requests again after neutral prefixes (contexts.py) and with variants of their subject
    # (subject_variants.py), trained on the same target
    context = None
    n_prefixes, n_variants = getattr(hparams, "context_prefixes", 0), getattr(hparams, "subject_variants", 0)
    if n_prefixes or n_variants:
        if tok is None or requests is None:
            raise ValueError("context_prefixes and subject_variants need the tokenizer and the requests (pass tok= "
                             "and requests=)")
        extra = context_requests(requests, n_prefixes, hparams.seed) + variant_requests(requests, n_variants)
        if extra:
            context = encode_requests(tok, extra, hparams.max_length).to(device)
            context_pos = prediction_positions(context.labels)
    opt = make_optimizer(params, hparams)
    # the main forward computes logits at the target-predicting positions (+ the prompt's, for kl_prompt)
    main_pos = positions if reg.prompt_pos is None else torch.unique(torch.cat([positions, reg.prompt_pos]))
    slot = {"pos": main_pos}
    stop_on_accuracy = getattr(hparams, "stop_on", "loss") == "accuracy"
    with kept_flags(model, freeze=True), Hooks() as hooks, torch.enable_grad():
        hooks.forward_pre(model.get_output_embeddings(),
                          lambda mod, args: (args[0][:, slot["pos"].to(args[0].device)],))

        def logits_at(ids, mask, pos):
            slot["pos"] = pos
            try:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                return logits_at_positions(model, out, pos, ids.shape[1])
            finally:
                slot["pos"] = main_pos

        if reg.active:  # pre-edit references; with init=kaiming the hooks are not on yet, so still pre-edit
            reg.reference(logits_at, batch)
        for u in updates:
            hooks.forward(u.module, _hook(u))
        target_cols = _columns(positions, main_pos)
        for step in tqdm(range(hparams.num_steps), desc="KNE edit", leave=False, disable=not progress):
            all_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               use_cache=False).logits
            all_logits = logits_at_positions(model, all_logits, main_pos, batch.input_ids.shape[1])
            logits = all_logits[:, target_cols]
            logp, mask = logprobs_at(logits, batch.labels, positions)
            # mean NLL of each request's target tokens, averaged over requests (and their prefixed copies)
            nll = logp.sum(1) / mask.sum(1).clamp(min=1)
            hit = _target_hits(logits, batch.labels, positions) if stop_on_accuracy else None
            if context is not None:
                c_logits = logits_at(context.input_ids, context.attention_mask, context_pos)
                c_logp, c_mask = logprobs_at(c_logits, context.labels, context_pos)
                nll = torch.cat([nll, c_logp.sum(1) / c_mask.sum(1).clamp(min=1)])
                if stop_on_accuracy:
                    hit = hit and _target_hits(c_logits, context.labels, context_pos)
            loss = -nll.mean()
            value = float(loss.detach())
            stats.losses.append(value)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"KNE edit: the loss became {value} at step {step}; lower lr (now {hparams.lr}) "
                    "or alpha; the model was left unchanged")
            if stop_on_accuracy:
                if hit:
                    stats.trained_holds = True
                    break
            elif value < hparams.t_loss:
                stats.trained_holds = True
                break
            if reg.prompt_weight:
                loss = loss + reg.prompt_term(all_logits[:, _columns(reg.prompt_pos, main_pos)])
            if reg.subject is not None:
                loss = loss + reg.subject_term(logits_at)
            if reg.essence is not None:
                loss = loss + reg.essence_term(logits_at)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if projs:
                project_(updates, projs)
            stats.steps += 1
    # a non-finite gradient at the last step would otherwise reach the weights unseen by the loss check
    bad = [u.name for u in updates if not bool(torch.isfinite(u.block).all())]
    if bad:
        raise FloatingPointError(
            f"KNE edit: the update of {', '.join(bad)} became non-finite after {stats.steps} steps; lower lr "
            f"(now {hparams.lr}) or alpha; the model was left unchanged")


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


def edit_goal_met(check, hparams) -> bool:
    """Training's own stopping goal, read on the merged model: every target token the argmax
    (`stop_on: accuracy`) or the mean target NLL below t_loss (`stop_on: loss`)."""
    if getattr(hparams, "stop_on", "loss") == "accuracy":
        return check.accuracy >= 1.0
    return check.loss < hparams.t_loss


def apply_kne_to_model(model, tok, requests, hparams, copy: bool = False, return_orig_weights: bool = False,
                       keep_original_weight: bool = False, ensemble=None, stats: EditStats | None = None,
                       progress: bool = False, return_edit: bool = False, **kwargs):
    """EasyEdit entry point: returns (edited_model, weights_copy), plus an `Edit` last with `return_edit`.

    `ensemble`: a KnowledgeNeuronalEnsemble or a path to a saved one (else `hparams.ensemble_path`,
    else localization on the configured localization set or on `requests`). `weights_copy` maps each
    modified parameter name to its original tensor when `return_orig_weights`; copying them back
    restores the model bit for bit. `keep_original_weight` is accepted for EasyEdit's signature; with
    `copy=True` the input model is left untouched. Other EasyEdit kwargs are ignored.
    """
    model, requests, batch = prepare_edit(model, tok, requests, hparams, copy)
    if ensemble is None and not hparams.ensemble_path:  # the targeted weights are known before localization
        check_not_offloaded([(t.name, t.module) for t in targets_from_hparams(model, hparams)], "KNE")
    stats = stats if stats is not None else EditStats()
    phase = "localization"
    try:
        ensemble = resolve_ensemble(model, tok, requests, hparams, ensemble, stats, progress)
        stats.num_neurons = ensemble.num_neurons
        stats.parameter_fraction = ensemble.parameter_fraction
        phase = "training"
        updates = build_updates(model, ensemble, hparams.alpha, hparams.init)
        start = time.perf_counter()
        train_updates(model, batch, updates, hparams, stats, progress, tok=tok, requests=requests)
        stats.train_seconds = time.perf_counter() - start
        phase = "merge"
        recorder = EditRecorder(model, updates) if return_edit else None  # reads the base slices

        def retrain():  # more rounds on the merged model, from a zero update on the same neurons
            more = build_updates(model, ensemble, hparams.alpha)
            train_updates(model, batch, more, hparams, stats, progress, tok=tok, requests=requests)
            return more

        weights_copy = merge_checked(model, batch, updates, lambda check: edit_goal_met(check, hparams), retrain,
                                     stats, return_orig_weights, "KNE")
    except OutOfMemoryError as err:
        raise OutOfMemoryError(
            f"KNE ran out of memory during {phase} ({str(err).strip() or type(err).__name__}); the model was "
            f"left unchanged. Lower ig_batch_size (now {hparams.ig_batch_size}) for localization, or edit "
            f"fewer requests at once (batch_size; this batch has {len(requests)}) or lower max_length "
            f"(now {hparams.max_length}) for training.") from err
    if return_edit:  # (edited_model, weights_copy, Edit): see easyedit_kne.edit_artifact
        return model, weights_copy, recorder.finish(model, requests, hparams)
    return model, weights_copy
