"""One request's edit quality: EasyEdit's compute_edit_quality (teacher-forced sections, fluency, exact match)."""

from __future__ import annotations

from typing import Any

import torch

from ..tokens import target_text
from .fluency import test_generation_quality
from .teacher_forced import (
    _as_list,
    compute_locality_quality,
    compute_portability_quality,
    compute_rewrite_or_rephrase_quality,
    greedy_exact_match,
)


# ------------------------------------------------------------------------------ whole edit quality
def compute_edit_quality(model, tok, request: dict, device=None, *, max_length: int = 40,
                         eval_metric: str = "token_em", test_generation: bool = False,
                         use_chat_template: bool = False, exact_match: bool = False,
                         fluency_max_len: int = 100, generator: torch.Generator | None = None) -> dict:
    """EasyEdit's compute_edit_quality for one request (teacher forcing, decoder-only model).

    Returns {"rewrite_acc": [...], "rephrase_acc": [...] (if the request has a rephrase_prompt),
    "locality": {f"{key}_output": [...]}, "portability": {f"{key}_acc": [...]},
    "fluency": {"ngram_entropy": ...} (test_generation), "metric_meta": {...},
    "exact_match": {"rewrite": [...], "rephrase": [...], "portability": {key: [...]}} (exact_match)}.
    Run it before and after the edit and call `finalize_locality_metrics({"pre": ..., "post": ...})`.
    """
    target_new = target_text(request)
    prompt = request["prompt"]
    rephrase = request.get("rephrase_prompt")
    kw = dict(max_length=max_length, use_chat_template=use_chat_template)
    ret = compute_rewrite_or_rephrase_quality(model, tok, prompt, target_new, device, eval_metric=eval_metric,
                                              **kw)
    ret["locality"] = {}
    ret["portability"] = {}
    if rephrase is not None:
        reph = compute_rewrite_or_rephrase_quality(model, tok, rephrase, target_new, device, test_rephrase=True,
                                                   eval_metric=eval_metric, **kw)
        ret["metric_meta"].update(reph.pop("metric_meta"))
        ret.update(reph)
    for key, item in (request.get("locality") or {}).items():
        if not _as_list(item["prompt"]):
            continue
        ret["locality"].update(compute_locality_quality(model, tok, key, item["prompt"], item["ground_truth"],
                                                        device, max_length=max_length))
    for key, item in (request.get("portability") or {}).items():
        if not _as_list(item["prompt"]):
            continue
        ret["portability"].update(compute_portability_quality(model, tok, key, item["prompt"],
                                                              item["ground_truth"], device, **kw))
    if test_generation:
        ret["fluency"] = test_generation_quality(model, tok, _as_list(prompt), max_out_len=fluency_max_len,
                                                 generator=generator)
    if exact_match:
        em: dict[str, Any] = {"rewrite": greedy_exact_match(model, tok, prompt, target_new, device)}
        if rephrase is not None:
            em["rephrase"] = greedy_exact_match(model, tok, rephrase, target_new, device)
        em["portability"] = {
            key: greedy_exact_match(model, tok, item["prompt"], item["ground_truth"], device)
            for key, item in (request.get("portability") or {}).items() if _as_list(item["prompt"])}
        ret["exact_match"] = em
    return ret

