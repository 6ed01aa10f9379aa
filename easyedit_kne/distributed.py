"""Localization spread over processes with torch.distributed (gloo on CPU, NCCL on CUDA).

    torchrun --nproc-per-node N -m easyedit_kne.cli localize --hparams H --data FILE --size K --out OUT

Request i goes to rank i mod N; each rank computes the per-request scores of its share (through the
ScoreCache when `cache_dir` is set, so a rerun resumes), the per-request scores are gathered, and every
rank aggregates them in the original request order (max / mean / sum give exactly the one-process
result); rank 0 alone builds the ensemble that the caller writes. Without a torchrun environment
(WORLD_SIZE unset or 1) it is the one-process `localize`.
"""

from __future__ import annotations

import os
import time


def world() -> tuple[int, int]:
    """(rank, world size) of this process, from torchrun's environment (0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_process_group():
    """Joins the group torchrun describes (NCCL when CUDA is there, else gloo); returns the device to use."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def localize_distributed(model, tok, requests, hparams, progress: bool = True):
    """The ensemble on rank 0, None on the other ranks; the one-process `localize` outside torchrun."""
    from .localization import localize

    rank, size = world()
    if size <= 1:
        return localize(model, tok, requests, hparams, progress=progress)

    import torch.distributed as dist

    from .attribution import aggregate, attribute_per_request
    from .cache import ScoreCache, model_fingerprint
    from .ensemble import KnowledgeNeuronalEnsemble
    from .modules import targets_from_hparams
    from .tokens import check_requests, target_text

    hparams.validate()
    requests = check_requests(requests)
    created = not dist.is_initialized()
    device = init_process_group()
    model.to(device)
    targets = targets_from_hparams(model, hparams)
    fingerprint = model_fingerprint(model)
    cache = ScoreCache(hparams.cache_dir, fingerprint=fingerprint) if hparams.cache_dir else None
    mine = list(range(rank, len(requests), size))
    start = time.perf_counter()
    scores = attribute_per_request(model, tok, [requests[i] for i in mine], hparams, cache=cache,
                                   progress=progress and rank == 0) if mine else []
    gathered = [None] * size
    dist.all_gather_object(gathered, (mine, scores, fingerprint))
    if len({g[2] for g in gathered}) != 1:
        raise RuntimeError("distributed localization: the ranks hold different model weights (fingerprints "
                           "differ); load the same model on every rank")
    per_request = [None] * len(requests)
    for indices, part, _ in gathered:
        for i, s in zip(indices, part, strict=True):
            per_request[i] = s
    ensemble = None
    if rank == 0:
        meta = {
            "model_fingerprint": fingerprint,
            "hparams": hparams.to_dict(),
            "items": [{"prompt": r["prompt"], "target_new": target_text(r)} for r in requests],
            "seconds": round(time.perf_counter() - start, 3),
            "method": "fast",
            "world_size": size,
        }
        scores = aggregate(per_request, hparams.score_aggregation)
        ensemble = KnowledgeNeuronalEnsemble.from_scores(scores, targets, hparams.p, hparams.selection_scope, meta)
    dist.barrier()
    if created:
        dist.destroy_process_group()
    return ensemble
