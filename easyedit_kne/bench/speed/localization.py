"""Speed bench: localization (fast attribution vs the naive Eq. 5), memory, throughput, scaling."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ...attribution import attribute_request, attribute_request_naive
from ...modules import find_blocks, find_target_modules
from ...tokens import encode_requests
from .measure import BenchConfig, agreement, evenly_spaced, measure, memory_method, synchronize, timed


# --------------------------------------------------------------------------------------------------------
# 1-3. Localization
# --------------------------------------------------------------------------------------------------------
def target_layers(model, n_modules: int) -> list[int]:
    _, blocks = find_blocks(model)
    return evenly_spaced(range(len(blocks)), n_modules)


def naive_attribution(model, tok, request, targets, steps, max_length, progress=True, desc="naive Eq. 5",
                      full_backward=False):
    """attribute_request_naive one module at a time (the same computation, with a progress bar)."""
    scores = {}
    for t in tqdm(targets, desc=desc, leave=False, disable=not progress):
        scores.update(attribute_request_naive(model, tok, request, [t], steps, max_length,
                                              full_backward=full_backward))
    return scores


def warm_up(model, tok, request, targets, cfg: BenchConfig, device) -> None:
    """Untimed first calls: they page in lazily loaded (memory-mapped) weights and set up kernels, which
    would otherwise be charged to whichever measurement runs first (about +500 MB RSS for SmolLM2)."""
    attribute_request(model, tok, request, targets[:2], 2, cfg.max_length, cfg.ig_batch_size)
    attribute_request_naive(model, tok, request, targets[:1], 1, cfg.max_length)
    synchronize(device)


def linear_macs(model, tok, request, targets, cfg: BenchConfig) -> dict:
    """Estimated multiply-adds of the linear layers for one request, naive and fast (attention scores ignored).

    Per (module at layer l, step), with T positions, n of them predicting a target token, P the weights of a
    block's linear maps and H those of the LM head: the naive path runs the whole forward (T·(L·P + H)) and a
    backward of input gradients from the top down to layer l (T·H + T·(L-l)·P) plus the weight gradient;
    the fast path runs layers ≥ l forward and backward (2·T·(L-l)·P) and the LM head only at the n positions
    (2·n·H), and one unscaled trunk row per pass.
    """
    from easyedit_kne.modules import is_linear_map

    _, blocks = find_blocks(model)
    L = len(blocks)
    P = sum(m.weight.numel() for m in blocks[0].modules() if is_linear_map(m))
    H = model.get_output_embeddings().weight.numel()
    enc = encode_requests(tok, [request], cfg.max_length)
    T, n = enc.lengths[0] - 1, len(enc.target_positions(0))
    m = cfg.ig_steps
    naive = m * sum(T * (L * P + H) + T * H + T * (L - t.layer) * P + T * t.d_out * t.d_in for t in targets)
    pairs = len(targets) * (m - 1)
    passes = math.ceil(pairs / max(1, cfg.ig_batch_size - 1))
    fast = (m - 1) * sum(2 * T * (L - t.layer) * P + 2 * n * H for t in targets) + passes * 2 * (T * L * P + n * H)
    return dict(naive=naive, fast=fast)


def gemm_gflops(device, dtype, size: int = 2048, repeats: int = 5) -> float:
    """This machine's rate on one large square matmul (the best of `repeats`), in GFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def localization_speed(model, tok, request, targets, cfg: BenchConfig, device) -> dict:
    """Fast path on all `targets` vs the naive path on an evenly spaced subset (all by default).

    The fast path is timed before and after the naive one and the ratio uses the mean of the two, so that
    a change of machine load during the (long) naive run does not fall on one side only.
    """
    run_fast = lambda: attribute_request(model, tok, request, targets, cfg.ig_steps, cfg.max_length,
                                         cfg.ig_batch_size)
    fast_s, fast_mem, fast = measure(run_fast, device)
    subset = evenly_spaced(targets, cfg.naive_modules)
    naive_s, naive_mem, naive = measure(
        lambda: naive_attribution(model, tok, request, subset, cfg.ig_steps, cfg.max_length, cfg.progress),
        device)
    full_s, _, _ = measure(
        lambda: naive_attribution(model, tok, request, subset, cfg.ig_steps, cfg.max_length, cfg.progress,
                                  desc="Eq. 5, training-loop backward", full_backward=True), device)
    fast_after_s, _ = timed(run_fast, device)
    fast_mean = (fast_s + fast_after_s) / 2
    naive_full = naive_s * len(targets) / len(subset)
    full_backward_full = full_s * len(targets) / len(subset)
    corr, rel = agreement(fast, naive)
    return dict(fast_s=fast_mean, fast_before_s=fast_s, fast_after_s=fast_after_s, fast_mem=fast_mem,
                naive_s=naive_s, naive_mem=naive_mem, naive_full_s=naive_full,
                n_targets=len(targets), n_naive=len(subset), extrapolated=len(subset) < len(targets),
                speedup=naive_full / fast_mean, min_corr=corr, max_rel=rel, scores=fast,
                full_backward_s=full_s, full_backward_full_s=full_backward_full,
                speedup_full_backward=full_backward_full / fast_mean,
                naive_per_module_step_s=naive_s / (len(subset) * cfg.ig_steps),
                macs=linear_macs(model, tok, request, targets, cfg),
                gemm_gflops=gemm_gflops(device, next(model.parameters()).dtype))


def localization_memory(model, tok, request, cfg: BenchConfig, device) -> dict:
    """Extra peak memory of one request's attribution, per target module type and per ig_batch_size."""
    layer = target_layers(model, 1)[0]
    per_module = []
    for suffix in cfg.memory_suffixes:
        try:
            (target,) = find_target_modules(model, [suffix], [layer])
        except ValueError:
            continue  # this architecture has no such module
        fast_s, fast_mem, _ = measure(
            lambda t=target: attribute_request(model, tok, request, [t], cfg.ig_steps, cfg.max_length,
                                               cfg.ig_batch_size), device)
        row = dict(name=target.name, suffix=suffix, d_out=target.d_out, d_in=target.d_in, axis=target.axis,
                   fast_s=fast_s, fast_mem=fast_mem, naive_s=None, naive_mem=None)
        if cfg.memory_naive:
            row["naive_s"], row["naive_mem"], _ = measure(
                lambda t=target: attribute_request_naive(model, tok, request, [t], cfg.ig_steps, cfg.max_length),
                device)
        per_module.append(row)
    targets = find_target_modules(model, [cfg.target_suffix], target_layers(model, cfg.n_modules))
    per_batch = []
    for bs in tqdm(cfg.ig_batch_sweep, desc="ig_batch_size sweep", leave=False, disable=not cfg.progress):
        seconds, extra, _ = measure(
            lambda b=bs: attribute_request(model, tok, request, targets, cfg.ig_steps, cfg.max_length, b), device)
        per_batch.append(dict(ig_batch_size=bs, seconds=seconds, mem=extra))
    return dict(layer=layer, per_module=per_module, per_batch=per_batch, n_targets=len(targets),
                method=memory_method(device))


def localization_throughput(model, tok, requests, targets, cfg: BenchConfig, device) -> dict:
    """Fast attribution of several items one after another; returns their scores too."""
    per_item, scores = [], []
    for i, r in enumerate(tqdm(requests, desc="throughput", leave=False, disable=not cfg.progress)):
        seconds, s = timed(lambda r=r, i=i: attribute_request(model, tok, r, targets, cfg.ig_steps,
                                                              cfg.max_length, cfg.ig_batch_size, index=i), device)
        per_item.append(seconds)
        scores.append(s)
    return dict(items=len(requests), seconds=sum(per_item), per_item=per_item,
                items_per_s=len(requests) / sum(per_item), scores=scores)


def localization_scaling(model, tok, request, targets, cfg: BenchConfig, device, naive_cost: float) -> dict:
    """Fast-path time vs ig_steps (all targets) and vs number of targets (ig_steps fixed).

    `naive_cost`: seconds of the naive path per (module, step), to estimate its time for comparison.
    """
    by_steps = []
    for steps in tqdm(cfg.steps_sweep, desc="ig_steps sweep", leave=False, disable=not cfg.progress):
        seconds, _ = timed(lambda s=steps: attribute_request(model, tok, request, targets, s, cfg.max_length,
                                                             cfg.ig_batch_size), device)
        by_steps.append(dict(steps=steps, modules=len(targets), seconds=seconds,
                             naive_est=naive_cost * steps * len(targets)))
    by_modules = []
    counts = sorted({min(k, len(targets)) for k in cfg.modules_sweep})
    for k in tqdm(counts, desc="modules sweep", leave=False, disable=not cfg.progress):
        subset = evenly_spaced(targets, k)
        seconds, _ = timed(lambda s=subset: attribute_request(model, tok, request, s, cfg.ig_steps, cfg.max_length,
                                                              cfg.ig_batch_size), device)
        by_modules.append(dict(steps=cfg.ig_steps, modules=len(subset), seconds=seconds,
                               naive_est=naive_cost * cfg.ig_steps * len(subset)))
    return dict(by_steps=by_steps, by_modules=by_modules)
