"""Evaluation cost, before and after: `easyedit-kne bench-eval` (python -m easyedit_kne.bench.bench_eval).

Times, in one process and side by side on the same items, the per-case evaluation of a single-edit run:
  today:       compute_edit_quality before the edit (teacher forced + exact match) and after it (+ fluency);
  new (cold):  fast_edit_quality before (stored in the pre-edit cache) and after;
  new (warm):  the pre-edit metrics read from the cache (every later method and run), fast_edit_quality after.
"After the edit" is the unedited model here (the cost of the passes does not depend on the weights; an edit
that succeeds lets the exact-match shortcut skip more generation). Prints seconds per case, the ratios, and
whether every metric value (fluency text included, via the n-gram entropy of the seeded sample) is identical.
It also times the post-edit fluency sample alone (the same seeded 100-token sample, checked to give the same
value): identical metrics need that sample of the edited model, so today / (fluency alone) is the most any
evaluation with the same values can gain here.
Default items: DEV items ZsRE-test-all [200, 205) (never the test split [0, 100)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _case(evaluate, model, tok, request, cid):
    pre, pre_s = evaluate(model, tok, request, cid, "pre")
    post, post_s = evaluate(model, tok, request, cid, "post")
    return {"pre": pre, "post": post}, pre_s + post_s


def _alone_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def fluency_alone(model, tok, request, seed: int, max_len: int) -> tuple[dict, float]:
    """The post-edit fluency sample by itself (the evaluation's sampler and seed): (its metric, seconds)."""
    import time

    from easyedit_kne.evaluate.fluency import test_generation_quality

    start = time.perf_counter()
    out = test_generation_quality(model, tok, [request["prompt"]], max_out_len=max_len,
                                  generator=_alone_generator(seed))
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=None, help="KnowEdit JSON (default: zsre/ZsRE-test-all.json in $KNOWEDIT_DIR)")
    p.add_argument("--type", default="zsre")
    p.add_argument("--offset", type=int, default=200)
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the timings and the verdict here")
    args = p.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from easyedit_kne.knowedit import load_knowedit
    from easyedit_kne.models import load_model

    from .config import default_knowedit_dir
    from .evaluator import Evaluator

    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("KNOWEDIT_DIR") or default_knowedit_dir())
    data = args.data or str(root / "zsre" / "ZsRE-test-all.json")
    requests = load_knowedit(data, args.type, size=args.size, offset=args.offset)
    model, tok = load_model(args.model)
    cfg = OmegaConf.create({"eval": {"fluency": True, "pre_fluency": False, "fluency_max_len": 100,
                                     "exact_match": True, "seed": 0}})

    class Today(Evaluator):  # what the runner did before: compute_edit_quality, no cache
        def compute(self, model, tok, request, case_id, phase):
            from easyedit_kne.evaluate import compute_edit_quality

            fluency = self.fluency if phase == "post" else self.pre_fluency
            gen = torch.Generator().manual_seed(self.seed + int(case_id)) if fluency else None
            return compute_edit_quality(model, tok, request, max_length=self.max_length, test_generation=fluency,
                                        exact_match=self.exact_match, fluency_max_len=self.fluency_max_len,
                                        generator=gen)

    seconds = {"today": 0.0, "new_cold": 0.0, "new_warm": 0.0, "fluency_alone": 0.0}
    identical = True
    with tempfile.TemporaryDirectory() as cache_dir:
        new = Evaluator(cfg, 40, cache_dir)
        for i, request in enumerate(requests):
            cid = args.offset + i
            base, s_today = _case(Today(cfg, 40), model, tok, request, cid)
            cold, s_cold = _case(new, model, tok, request, cid)
            warm, s_warm = _case(new, model, tok, request, cid)
            flu, s_flu = fluency_alone(model, tok, request, cfg.eval.seed + cid, cfg.eval.fluency_max_len)
            same = json.dumps(base, sort_keys=True) == json.dumps(cold, sort_keys=True) == json.dumps(
                warm, sort_keys=True) and flu == base["post"]["fluency"]
            identical &= same
            for k, v in zip(seconds, (s_today, s_cold, s_warm, s_flu), strict=True):
                seconds[k] += v
            print(f"case {cid}: today {s_today:.2f}s, new cold {s_cold:.2f}s, new warm {s_warm:.2f}s, "
                  f"post-edit fluency sample alone {s_flu:.2f}s, values identical: {same}", flush=True)
    n = len(requests)
    per = {k: v / n for k, v in seconds.items()}
    report = {"items": f"{data} [{args.offset}, {args.offset + n})", "threads": args.threads,
              "seconds_per_case": per, "ratio_cold": per["today"] / per["new_cold"],
              "ratio_warm": per["today"] / per["new_warm"], "ratio_ceiling": per["today"] / per["fluency_alone"],
              "identical": identical,
              "versions": {"torch": torch.__version__}}
    print(f"per case: today {per['today']:.2f}s, new {per['new_cold']:.2f}s with the pre-edit pass computed "
          f"(x{report['ratio_cold']:.2f}), {per['new_warm']:.2f}s with it cached (x{report['ratio_warm']:.2f}); "
          f"every metric value identical: {identical}")
    print(f"the post-edit fluency sample alone: {per['fluency_alone']:.2f}s per case "
          f"({100 * per['fluency_alone'] / per['new_warm']:.0f}% of the cached evaluation): no evaluation with the "
          f"same values can be more than x{report['ratio_ceiling']:.2f} faster than today here")
    if args.json:  # committed beside the runs: no machine path (portable.py), the KnowEdit folder named
        from .config import repo_root
        from .portable import portable, roots

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(portable(report, roots([(root, "${knowedit_dir}"), (repo_root(), "")])), f, indent=2)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
