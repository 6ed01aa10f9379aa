"""Speed bench: one training step (sparse KNE vs dense masked vs frozen) and whole edits (KNE, FT-L, LoRA)."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from ...hooks import Hooks
from ...hparams import KNEHyperParams
from ...kne_main import EditStats, apply_kne_to_model, build_updates
from ...model_flags import kept_flags
from ...modules import find_blocks, find_target_modules
from ...tokens import encode_requests, target_logprobs
from .localization import target_layers
from .measure import BenchConfig, median_ms, timed


# --------------------------------------------------------------------------------------------------------
# 4. One training step: sparse update vs dense masked ΔW vs frozen model
# --------------------------------------------------------------------------------------------------------
def nll_loss(model, batch) -> torch.Tensor:
    """KNE's objective: mean NLL of each request's target tokens, averaged over the requests."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logp, mask = target_logprobs(logits, batch.labels)
    return -(logp.sum(1) / mask.sum(1).clamp(min=1)).mean()


class DenseMaskedUpdate:
    """The authors' layout: a full trainable ΔW (d_out × d_in, zero init) times a fixed 0/1 mask of the
    ensemble's columns (`in` axis) or rows (`out` axis), added on every forward: y += (α/√n)·x @ (ΔW⊙M)ᵀ."""

    def __init__(self, sparse, d_out: int, d_in: int):
        device = sparse.block.device
        self.delta = torch.zeros(d_out, d_in, dtype=torch.float32, device=device, requires_grad=True)
        self.mask = torch.zeros(d_out, d_in, dtype=torch.float32, device=device)
        if sparse.axis == "in":
            self.mask[:, sparse.index] = 1.0
        else:
            self.mask[sparse.index, :] = 1.0
        self.scale = sparse.scale

    def add_to_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + ((x.float() @ (self.delta * self.mask).t()) * self.scale).to(y.dtype)


STEP_KINDS = ("frozen", "sparse", "dense")


def training_step_times(model, batch, ensemble, cfg: BenchConfig, device) -> dict:
    """ms per step of each kind, interleaved round by round (so load drifts hit all three alike).

    sparse: KNE's SparseUpdate hooks (O(n·d)) and Adam on the n × d blocks; dense: DenseMaskedUpdate and
    Adam on the full ΔW; frozen: no trainable parameter, the input embeddings require grad so that the
    backward runs through the network. The sparse and dense updates train the same entries from zero with
    the same Adam, so their losses must agree step by step.
    """
    batch = batch.to(device)
    sparse = build_updates(model, ensemble, cfg.alpha)
    dense = [DenseMaskedUpdate(u, *ensemble.module_shapes[u.name]) for u in sparse]
    optimizers = {"sparse": torch.optim.Adam([u.block for u in sparse], lr=cfg.kne_lr),
                  "dense": torch.optim.Adam([d.delta for d in dense], lr=cfg.kne_lr)}
    active = {"kind": None}

    def update_hook(kind, update):
        def hook(mod, args, out):
            return update.add_to_output(args[0], out) if active["kind"] == kind else None
        return hook

    def embedding_hook(mod, args, out):
        return out.detach().requires_grad_(True) if active["kind"] == "frozen" else None

    seconds = {k: [] for k in STEP_KINDS}
    losses = {k: [] for k in STEP_KINDS}
    rounds = cfg.warmup_steps + cfg.timed_steps
    with kept_flags(model, freeze=True), Hooks() as hooks, torch.enable_grad():
        hooks.forward(model.get_input_embeddings(), embedding_hook)
        for s, d in zip(sparse, dense, strict=True):
            hooks.forward(s.module, update_hook("sparse", s))
            hooks.forward(s.module, update_hook("dense", d))
        for r in tqdm(range(rounds), desc="training steps", leave=False, disable=not cfg.progress):
            order = STEP_KINDS[r % 3:] + STEP_KINDS[:r % 3]  # rotate so no kind always runs first
            for kind in order:
                active["kind"] = kind
                opt = optimizers.get(kind)

                def step(opt=opt):
                    loss = nll_loss(model, batch)
                    if opt is not None:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if opt is not None:
                        opt.step()
                    return loss

                dt, loss = timed(step, device)
                losses[kind].append(float(loss.detach()))
                if r >= cfg.warmup_steps:
                    seconds[kind].append(dt)
        active["kind"] = None
    ms = {k: median_ms(v) for k, v in seconds.items()}
    n_sparse = sum(u.block.numel() for u in sparse)
    n_dense = sum(d.delta.numel() for d in dense)
    return dict(ms=ms, all_ms={k: [1000 * x for x in v] for k, v in seconds.items()}, losses=losses,
                batch=tuple(batch.input_ids.shape), neurons=ensemble.num_neurons, modules=len(sparse),
                trainable_sparse=n_sparse, trainable_dense=n_dense,
                sparse_over_dense=ms["sparse"] / ms["dense"], sparse_over_frozen=ms["sparse"] / ms["frozen"],
                dense_over_frozen=ms["dense"] / ms["frozen"])


# --------------------------------------------------------------------------------------------------------
# 5. Edit time per request: KNE vs FT-L vs LoRA
# --------------------------------------------------------------------------------------------------------
def restore_weights(model, weights_copy: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights_copy.items():
            params[name].copy_(value)


def kne_edit(model, tok, request, hparams, ensemble, device) -> tuple[float, float]:
    """apply_kne_to_model on one request (`ensemble=None`: it localizes first); the model is restored after."""
    stats = EditStats()
    seconds, (_, weights_copy) = timed(
        lambda: apply_kne_to_model(model, tok, [request], hparams, ensemble=ensemble, return_orig_weights=True,
                                   stats=stats), device)
    restore_weights(model, weights_copy)
    return seconds, stats.losses[-1]


def _train_steps(model, batch, opt, steps: int) -> float:
    """`steps` steps of `opt` on KNE's loss (nll_loss); returns the loss of the last step (nan for none)."""
    last = math.nan
    with torch.enable_grad():
        for _ in range(steps):
            loss = nll_loss(model, batch)
            last = float(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return last


def ftl_edit(model, tok, request, module, cfg: BenchConfig, device) -> tuple[float, float]:
    """Our minimal FT-L (not EasyEdit's code): Adam on one module's full weight, KNE's loss, no early stop."""
    weight = module.weight

    def run():
        batch = encode_requests(tok, [request], cfg.max_length).to(device)
        original = weight.detach().clone()  # what EasyEdit's weights_copy holds
        with kept_flags(model, freeze=True):
            weight.requires_grad_(True)
            last = _train_steps(model, batch, torch.optim.Adam([weight], lr=cfg.ftl_lr), cfg.edit_steps)
        return original, last

    seconds, (original, last) = timed(run, device)
    with torch.no_grad():
        weight.copy_(original)
    weight.grad = None
    return seconds, last


def lora_edit(model, tok, request, cfg: BenchConfig, device) -> tuple[float, float]:
    """peft LoRA (rank cfg.lora_rank, no dropout) on the target module type of every layer, KNE's loss."""
    from peft import LoraConfig, get_peft_model

    flags = [(p, p.requires_grad) for p in model.parameters()]
    leaf = cfg.target_suffix.split(".")[-1]

    def run():
        batch = encode_requests(tok, [request], cfg.max_length).to(device)
        config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=[leaf],
                            bias="none")
        peft_model = get_peft_model(model, config)
        peft_model.eval()
        opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lora_lr)
        return peft_model, _train_steps(peft_model, batch, opt, cfg.edit_steps)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns when the same base model is wrapped again
            seconds, (peft_model, last) = timed(run, device)
            peft_model.unload()  # drop the adapters: the base model is as it was
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return seconds, last


def edit_times(model, tok, requests, ensemble, cfg: BenchConfig, device) -> dict:
    """Seconds per request of each method, interleaved request by request; the model is restored after each."""
    layers = target_layers(model, cfg.n_modules)
    hparams = KNEHyperParams(model_name="bench", target_modules=[cfg.target_suffix], layers=layers, p=cfg.p,
                             ig_steps=cfg.ig_steps, ig_batch_size=cfg.ig_batch_size, max_length=cfg.max_length,
                             num_steps=cfg.edit_steps, t_loss=0.0, lr=cfg.kne_lr, alpha=cfg.alpha)
    n_layers = len(find_blocks(model)[1])
    ftl_layer = min(n_layers - 1, round(2 * n_layers / 3))  # EasyEdit's FT-L edits layer 21 of 32 on Llama
    (ftl_target,) = find_target_modules(model, [cfg.target_suffix], [ftl_layer])

    def methods(steps: int) -> dict:
        hp = replace(hparams, num_steps=steps)
        c = replace(cfg, edit_steps=steps)
        return {
            "KNE, edit only (precomputed ensemble)": lambda r: kne_edit(model, tok, r, hp, ensemble, device),
            "KNE, localization + edit": lambda r: kne_edit(model, tok, r, hp, None, device),
            f"FT-L (ours, minimal: {ftl_target.name}, full Adam)":
                lambda r: ftl_edit(model, tok, r, ftl_target.module, c, device),
            f"LoRA (peft, r={cfg.lora_rank}, {cfg.target_suffix} of all layers)":
                lambda r: lora_edit(model, tok, r, c, device),
        }

    for fn in methods(1).values():  # warm-up: first calls with new shapes allocate and initialize
        fn(requests[0])
    timed_methods = methods(cfg.edit_steps)
    seconds = {m: [] for m in timed_methods}
    last_loss = {m: [] for m in timed_methods}
    for r in tqdm(requests, desc="edits", leave=False, disable=not cfg.progress):
        for name, fn in timed_methods.items():
            s, loss = fn(r)
            seconds[name].append(s)
            last_loss[name].append(loss)
    return dict(seconds={m: statistics.mean(v) for m, v in seconds.items()}, all_seconds=seconds,
                last_loss={m: statistics.mean(v) for m, v in last_loss.items()}, requests=len(requests),
                steps=cfg.edit_steps, ftl_layer=ftl_layer, hparams=hparams)
