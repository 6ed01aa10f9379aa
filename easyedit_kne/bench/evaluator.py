"""Per-case metrics in the runner: easyedit_kne.evaluate before and after the edit (fluency seeded per case)."""

from __future__ import annotations

import time


# ------------------------------------------------------------------------------------------ evaluation
class Evaluator:
    def __init__(self, cfg, max_length: int):
        self.fluency = bool(cfg.eval.fluency)
        self.pre_fluency = bool(cfg.eval.pre_fluency)
        self.fluency_max_len = int(cfg.eval.fluency_max_len)
        self.exact_match = bool(cfg.eval.exact_match)
        self.seed = int(cfg.eval.seed)
        self.max_length = max_length

    def __call__(self, model, tok, request: dict, case_id: int, phase: str) -> tuple[dict, float]:
        import torch

        from easyedit_kne.evaluate import compute_edit_quality

        start = time.perf_counter()
        fluency = self.fluency if phase == "post" else self.pre_fluency
        generator = None
        if fluency:
            device = next(model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(self.seed + int(case_id))
        metrics = compute_edit_quality(model, tok, request, max_length=self.max_length, test_generation=fluency,
                                       exact_match=self.exact_match, fluency_max_len=self.fluency_max_len,
                                       generator=generator)
        return metrics, time.perf_counter() - start


def finalize_case(pre: dict, post: dict, request: dict) -> dict:
    from easyedit_kne.evaluate import finalize_locality_metrics

    case = {"pre": pre, "post": post}
    finalize_locality_metrics(case, request)
    return case
