"""Per-case metrics in the runner: easyedit_kne.evaluate before and after the edit (fluency seeded per case:
a torch.Generator seeded with eval.seed + case id). The pre-edit metrics come from the content-addressed
cache (bench/pre_eval.py) when `pre_eval_dir` is set; the evaluation is `fast_edit_quality` (the same values
as compute_edit_quality, batched)."""

from __future__ import annotations

import time


# ------------------------------------------------------------------------------------------ evaluation
class Evaluator:
    def __init__(self, cfg, max_length: int, pre_eval_dir=None):
        self.fluency = bool(cfg.eval.fluency)
        self.pre_fluency = bool(cfg.eval.pre_fluency)
        self.fluency_max_len = int(cfg.eval.fluency_max_len)
        self.exact_match = bool(cfg.eval.exact_match)
        self.seed = int(cfg.eval.seed)
        self.max_length = max_length
        self.pre_eval_dir = pre_eval_dir
        self.cache = None

    def config(self, case_id: int, phase: str) -> dict:
        """What this phase's metrics of a case depend on besides the model and the request."""
        fluency = self.fluency if phase == "post" else self.pre_fluency
        out = {"max_length": int(self.max_length), "exact_match": self.exact_match, "fluency": fluency}
        if fluency:
            out.update(fluency_max_len=self.fluency_max_len, fluency_seed=self.seed + int(case_id))
        return out

    def compute(self, model, tok, request: dict, case_id: int, phase: str) -> dict:
        import torch

        from easyedit_kne.evaluate import fast_edit_quality

        fluency = self.fluency if phase == "post" else self.pre_fluency
        generator = None
        if fluency:
            device = next(model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(self.seed + int(case_id))
        return fast_edit_quality(model, tok, request, max_length=self.max_length, test_generation=fluency,
                                 exact_match=self.exact_match, fluency_max_len=self.fluency_max_len,
                                 generator=generator)

    def __call__(self, model, tok, request: dict, case_id: int, phase: str) -> tuple[dict, float]:
        from .pre_eval import PreEvalCache, pre_evaluate

        start = time.perf_counter()
        if phase == "pre":
            if self.cache is None and self.pre_eval_dir is not None:
                self.cache = PreEvalCache(self.pre_eval_dir, model)  # the unedited model, fingerprinted once
            metrics = pre_evaluate(model, tok, request, case_id, self, self.cache)
        else:
            metrics = self.compute(model, tok, request, case_id, phase)
        return metrics, time.perf_counter() - start


def finalize_case(pre: dict, post: dict, request: dict) -> dict:
    from easyedit_kne.evaluate import finalize_locality_metrics

    case = {"pre": pre, "post": post}
    finalize_locality_metrics(case, request)
    return case
