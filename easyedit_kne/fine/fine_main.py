"""apply_fine_to_model: FiNE's edit of a few value vectors, merged into the weights in place.

After localization (`locate.py`), each selected neuron i of layer l gets a zero-initialized delta δ_{l,i}
(a vector of the hidden size) added to its value vector W_down^l[:, i]. While training, the value module
computes y + a[..., idx] @ Δ (a hook; `kne_main.SparseUpdate` with axis "in" and scale 1, O(n·d) per
token); afterwards Δ is added into the weights (`merge.merge_checked`, which also checks that the edit holds
on the merged weights) and every hook is removed.

Loss (per request, then averaged over the requests of the batch), following the paper's editing objective and the
authors' `execute_fine` (github.com/opanhw/FiNE, easyeditor/models/fine/fine_main.py); the code below is
ours, not theirs:

* NLL: max_j −log P(y_j | x, y_<j) over the target tokens (the worst token, not the mean).
* KL: alpha · KL(P_orig ‖ P_edited), summed over the vocabulary and averaged over the prompt positions
  whose next token is still part of the prompt (positions 0 .. n_prompt−2; the last prompt position
  predicts y_1 and must change). P_orig comes from one forward pass of the unedited model before
  training (the localization pass; its hooks only read).
* Repetition penalty: beta · max_j −log(1 − P(y_j | x, y_1..y_s)) at the position right after the whole
  target, i.e. the probability of emitting any target token again once the target is complete. This is
  what the authors' code computes (`penalty_loss` on `logits[0, -1]`); it keeps the model from looping on
  the new answer ("Rome Rome Rome"). Computed as logsumexp over the other tokens minus logsumexp over all
  tokens, which stays exact (with a gradient) where 1 − P underflows.
* Norm: gamma · ‖Δ‖₂, the L2 (Frobenius) norm of all deltas of the edit together (not squared).

Adam (`lr`, `weight_decay`) for at most `epochs` steps; before each step, training stops once every target
token of every request has probability above `early_stop_prob` (the authors' test nll < −log p). A
non-finite loss raises FloatingPointError before anything is written.

As in the authors' code, each selected (target token, neuron) pair has its own delta, so a neuron chosen for
two tokens is moved by the sum of two deltas (Adam steps each, the L2 norm counts both); `locate` runs in
eval mode; for GPT-J the prompt starts with <|endoftext|> (their `model_type == "gptj"` case).
Differences from the authors' code, on purpose: deltas are float32 whatever the
model dtype (theirs are bfloat16); several requests are edited together with one set of deltas (theirs
trains each request alone on the unedited model and adds the deltas up); a NaN loss aborts the edit
instead of merging what was trained; and `weights_copy` follows EasyEdit's contract like
`apply_kne_to_model` (theirs is emptied unless keep_original_weight).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..edit_artifact import EditRecorder
from ..hooks import Hooks
from ..kne_main import EditStats, _hook, prepare_edit
from ..merge import SparseUpdate, merge_checked
from ..model_flags import kept_flags
from ..modules import model_device
from ..tokens import IGNORE_INDEX, EncodedBatch, encode_requests, target_logprobs
from .locate import FiNELocation, locate

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5: cuda's


@dataclass
class FiNEStats(EditStats):
    """EditStats plus FiNE's loss terms per step (weighted as in the loss) and what was selected."""

    nll: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    penalty: list = field(default_factory=list)
    norm: list = field(default_factory=list)
    min_target_prob: list = field(default_factory=list)  # per step: the lowest target-token probability
    early_stopped: bool = False
    layers: list = field(default_factory=list)  # blocks with at least one edited neuron
    location: FiNELocation | None = None


def build_fine_updates(location: FiNELocation, delta_per: str = "token") -> list[SparseUpdate]:
    """One SparseUpdate per edited module, axis "in" (columns of the map), scale 1, with one zero-initialized
    delta per selected (request, target token, neuron), as the authors: a neuron chosen for two tokens gets
    two deltas whose sum is its update (`combine`), which Adam and the L2 norm treat as two parameters.
    `delta_per="neuron"`: one delta per unique neuron instead (no `combine`)."""
    pairs: dict[int, list[int]] = {}
    for top in location.top:
        for layer_k, neuron in top.reshape(-1, 2).tolist():
            pairs.setdefault(layer_k, []).append(neuron)
    updates = []
    for k, m in enumerate(location.modules):
        chosen = pairs.get(k)
        if not chosen:
            continue
        device = m.weight.device
        idx = location.neurons[m.name]
        if delta_per == "neuron":
            combine, chosen = None, idx.tolist()
        else:
            combine = (idx.unsqueeze(1) == torch.tensor(chosen).unsqueeze(0)).float().to(device)
        block = torch.zeros(len(chosen), m.d_out, dtype=torch.float32, device=device, requires_grad=True)
        updates.append(SparseUpdate(m.name, m.module, "in", idx.to(device), block, 1.0, combine=combine))
    return updates


@dataclass
class LossMasks:
    """Positions each loss term reads, derived once from the batch."""

    kl: torch.Tensor  # (B, T) bool: prompt positions whose next token is a prompt token
    last: torch.Tensor  # (B,) the last real position of each request (after the whole target)
    target_ids: torch.Tensor  # (B, T) the target tokens (clamped labels)
    target_mask: torch.Tensor  # (B, T) bool: which of them are targets

    @classmethod
    def from_batch(cls, batch: EncodedBatch) -> LossMasks:
        B, T = batch.input_ids.shape
        target_mask = batch.labels != IGNORE_INDEX
        n_prompt = target_mask.float().argmax(1)  # first target position = number of prompt tokens
        pos = torch.arange(T, device=batch.input_ids.device).expand(B, T)
        kl = pos < (n_prompt - 1).unsqueeze(1)
        last = torch.tensor(batch.lengths, device=batch.input_ids.device) - 1
        return cls(kl, last, batch.labels.clamp(min=0), target_mask)


def log_one_minus_prob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log(1 − softmax(logits)[ids]) for logits (B, V) and ids (B, K): (B, K), exact even when P → 1.

    Computed as logsumexp over every token but ids[b, k], minus logsumexp over all tokens, so neither
    saturates (1 − P underflows in float32 long before this does) and the gradient never vanishes.
    """
    B, V = logits.shape
    others = logits.unsqueeze(1).expand(B, ids.shape[1], V).scatter(-1, ids.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1, keepdim=True)


def fine_loss(logits: torch.Tensor, batch: EncodedBatch, masks: LossMasks, original_logp: torch.Tensor,
              blocks: list[torch.Tensor], hparams):
    """(loss, terms {nll, kl, penalty, norm} weighted as in the loss, min target prob per request)."""
    logits = logits.float()
    B = logits.shape[0]
    # NLL: the worst target token of each request
    tlogp, tmask = target_logprobs(logits, batch.labels)
    nll = (-tlogp).masked_fill(~tmask, float("-inf")).max(1).values  # (B,)
    # KL(original || edited) on the prompt positions, mean over positions
    logp = torch.log_softmax(logits, dim=-1)
    if masks.kl.any():
        kl_pos = (original_logp.exp() * (original_logp - logp)).sum(-1)  # (B, T)
        kl = (kl_pos * masks.kl).sum(1) / masks.kl.sum(1).clamp(min=1)
    else:
        kl = logits.new_zeros(B)
    # repetition penalty: probability of any target token right after the target
    last_logits = logits[torch.arange(B, device=logits.device), masks.last]  # (B, V)
    rep = -log_one_minus_prob(last_logits, masks.target_ids)  # (B, T)
    penalty = rep.masked_fill(~masks.target_mask, float("-inf")).max(1).values
    norm = torch.linalg.vector_norm(torch.cat([b.reshape(-1) for b in blocks]))
    loss = (nll + hparams.alpha * kl + hparams.beta * penalty).mean() + hparams.gamma * norm
    terms = {"nll": float(nll.detach().mean()), "kl": float(hparams.alpha * kl.detach().mean()),
             "penalty": float(hparams.beta * penalty.detach().mean()), "norm": float(hparams.gamma * norm.detach())}
    return loss, terms, torch.exp(-nll.detach())


def train_fine(model, batch: EncodedBatch, location: FiNELocation, updates: list[SparseUpdate], hparams,
               stats: FiNEStats, progress: bool = False, tok=None, requests=None) -> None:
    from ..regularizers import Regularizer

    device = model_device(model)
    batch = batch.to(device)
    masks = LossMasks.from_batch(batch)
    original_logp = torch.log_softmax(location.logits.to(device).float(), dim=-1)
    blocks = [u.block for u in updates]
    opt = torch.optim.Adam(blocks, lr=hparams.lr, weight_decay=hparams.weight_decay)
    stats.trained_holds = False
    essence = None  # only the essence term of regularizers.py: FiNE's own KL is fine_loss's
    if hparams.kl_essence_weight:
        if tok is None or requests is None:
            raise ValueError("kl_essence_weight needs the tokenizer and the requests (pass tok= and requests=)")
        essence = Regularizer(tok, requests, batch, hparams, device)
        essence = essence if essence.active else None  # no request with a subject: nothing to keep

    def logits_at(ids, mask, pos):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, pos.to(device)]

    with kept_flags(model, freeze=True), Hooks() as hooks, torch.enable_grad():
        if essence is not None:
            essence.reference(logits_at, batch)  # before the hooks: the unedited model
        for u in updates:
            hooks.forward(u.module, _hook(u))
        for step in tqdm(range(hparams.epochs), desc="FiNE edit", leave=False, disable=not progress):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            loss, terms, min_prob = fine_loss(logits, batch, masks, original_logp, blocks, hparams)
            if essence is not None:
                loss = loss + essence.essence_term(logits_at)
            value = float(loss.detach())
            stats.losses.append(value)
            for name, v in terms.items():
                getattr(stats, name).append(v)
            stats.min_target_prob.append(float(min_prob.min()))
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"FiNE edit: the loss became {value} at step {step}; lower lr (now {hparams.lr}); "
                    "the model was left unchanged")
            if hparams.early_stop_prob is not None and bool((min_prob > hparams.early_stop_prob).all()):
                stats.early_stopped = stats.trained_holds = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.steps += 1


def prompt_prefix(model, tok) -> list[int]:
    """Token ids put before every prompt: <|endoftext|> for GPT-J, as the authors encode GPT-J prompts."""
    if getattr(getattr(model, "config", None), "model_type", None) == "gptj" and tok.eos_token_id is not None:
        return [int(tok.eos_token_id)]
    return []


def edit_holds(check, hparams) -> bool:
    """FiNE's goal on the merged model: every target token above early_stop_prob (else: every one the argmax)."""
    if hparams.early_stop_prob is None:
        return check.accuracy >= 1.0
    return check.min_prob > hparams.early_stop_prob


def apply_fine_to_model(model, tok, requests, hparams, copy: bool = False, return_orig_weights: bool = False,
                        keep_original_weight: bool = False, stats: FiNEStats | None = None,
                        progress: bool = False, return_edit: bool = False, **kwargs):
    """EasyEdit entry point: returns (edited_model, weights_copy), plus an `Edit` last with `return_edit`.

    Same contract as `apply_kne_to_model`: the requests are checked and encoded before anything else;
    the edit is written into the weights in place (of a deep copy with `copy=True`, leaving the input
    model untouched); `weights_copy` maps each modified parameter name to its original tensor when
    `return_orig_weights` (copying them back restores the model bit for bit); no hook is left behind; a
    failure before or during the merge leaves the weights as they were. `keep_original_weight` is
    accepted for EasyEdit's signature; other EasyEdit kwargs (e.g. `train_ds`) are ignored.
    """
    model, requests, batch = prepare_edit(model, tok, requests, hparams, copy)
    if prompt_prefix(model, tok):
        batch = encode_requests(tok, requests, hparams.max_length, prefix_ids=prompt_prefix(model, tok))
    stats = stats if stats is not None else FiNEStats()
    phase = "localization"
    try:
        start = time.perf_counter()
        location = locate(model, tok, requests, hparams, batch=batch)
        stats.localize_seconds = time.perf_counter() - start
        stats.location = location
        stats.num_neurons = location.num_neurons
        stats.layers = location.layers()
        updates = build_fine_updates(location, hparams.delta_per)
        total = sum(p.numel() for p in model.parameters())
        stats.parameter_fraction = sum(len(u.index) * u.block.shape[1] for u in updates) / max(1, total)
        phase = "training"
        start = time.perf_counter()
        train_fine(model, batch, location, updates, hparams, stats, progress, tok, requests)
        stats.train_seconds = time.perf_counter() - start
        phase = "merge"
        recorder = EditRecorder(model, updates) if return_edit else None  # reads the base slices

        def retrain():
            more = build_fine_updates(location, hparams.delta_per)
            train_fine(model, batch, location, more, hparams, stats, progress, tok, requests)
            return more

        weights_copy = merge_checked(model, batch, updates, lambda check: edit_holds(check, hparams), retrain,
                                     stats, return_orig_weights, "FiNE")
        location.logits = None  # free the (B, T, V) logits; the rest of the location stays in stats
    except OutOfMemoryError as err:
        raise OutOfMemoryError(
            f"FiNE ran out of memory during {phase} ({str(err).strip() or type(err).__name__}); the model was "
            f"left unchanged. Edit fewer requests at once (batch_size; this batch has {len(requests)}) or lower "
            f"max_length (now {hparams.max_length}).") from err
    if return_edit:  # (edited_model, weights_copy, Edit): see easyedit_kne.edit_artifact
        return model, weights_copy, recorder.finish(model, requests, hparams)
    return model, weights_copy
