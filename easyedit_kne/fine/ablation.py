"""FiNE ablation on dev items: several configurations, single edits with rollback, fluency on.

    python -m easyedit_kne.fine.ablation --spec spec.yaml --out /path/to/run

The spec (YAML): `model` (a config name of easyedit_kne.models.load_model), `base` (a FiNE hparams YAML),
`dataset` and `n` (the first n items of the protocol's dev split; test items are refused), and `configs`,
an ordered mapping name -> overrides of the base ({} for the base itself). Optional: `fluency_max_len`
(100), `seed` (0; fluency sampling uses a torch.Generator seeded with seed + item index, as the
benchmark), `pre_eval_dir` (the benchmark's pre-edit cache).

Items are the outer loop (every configuration is run on item 1 before item 2), so a run stopped early
still holds a paired comparison on its first items. `cases.jsonl` gets one line per (item, config): the
table values of the case (stats.case_values), the edit's steps / early stop / neurons / layers / final
loss terms, or the error. A rerun skips the lines already written. `summary.json` and `summary.md`: per
configuration the mean and bootstrap CI over items of Edit Succ., Portability, Locality and Fluency, and
the paired difference to the first configuration on the items both finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from types import SimpleNamespace

METRICS = ("Edit Succ.", "Portability", "Locality", "Fluency")


def load_spec(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    for key in ("model", "base", "dataset", "n", "configs"):
        if key not in spec:
            raise ValueError(f"{path}: `{key}` is missing (see easyedit_kne.fine.ablation's docstring)")
    if not isinstance(spec["configs"], dict) or not spec["configs"]:
        raise ValueError(f"{path}: `configs` must map each configuration's name to its overrides ({{}} for the base)")
    return spec


def config_hparams(base: dict, overrides: dict | None):
    """FiNEHyperParams of the base YAML's fields with `overrides` applied (each checked)."""
    from . import FiNEHyperParams

    unknown = set(overrides or {}) - set(FiNEHyperParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"ablation overrides {sorted(unknown)}: not FiNE fields")
    return FiNEHyperParams.from_dict({**base, **(overrides or {})})


def _done(path: str) -> set[tuple[str, str]]:
    if not os.path.exists(path):
        return set()
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.add((row["item"], row["config"]))
    return out


def _edit_record(stats, seconds: float) -> dict:
    last = {k: (getattr(stats, k)[-1] if getattr(stats, k) else None) for k in ("nll", "kl", "penalty", "norm")}
    return {"steps": stats.steps, "early_stopped": stats.early_stopped, "num_neurons": stats.num_neurons,
            "layers": stats.layers, "seconds": round(seconds, 2), "final_terms": last,
            "min_target_prob": stats.min_target_prob[-1] if stats.min_target_prob else None}


def run_ablation(model, tok, configs: dict, base: dict, requests: list, ids: list, out_dir: str, *,
                 fluency_max_len: int = 100, seed: int = 0, pre_eval_dir: str | None = None) -> str:
    """Append every (item, config) case to out_dir/cases.jsonl (skipping those there); returns its path."""
    import torch

    from ..bench.evaluator import Evaluator, finalize_case
    from ..stats import case_values
    from . import FiNEStats, apply_fine_to_model

    hparams = {name: config_hparams(base, over) for name, over in configs.items()}  # all checked up front
    lengths = {hp.max_length for hp in hparams.values()}
    if len(lengths) != 1:
        raise ValueError(f"ablation: configurations differ in max_length ({sorted(lengths)}); the evaluation "
                         "needs one")
    cfg = SimpleNamespace(eval=SimpleNamespace(fluency=True, pre_fluency=True, fluency_max_len=fluency_max_len,
                                               exact_match=False, seed=seed))
    evaluate = Evaluator(cfg, lengths.pop(), pre_eval_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "cases.jsonl")
    done = _done(path)
    for request, item in zip(requests, ids, strict=True):
        case_id = int(item.rsplit("#", 1)[1])
        pre = None
        for name, hp in hparams.items():
            if (item, name) in done:
                continue
            if pre is None:
                pre, _ = evaluate(model, tok, request, case_id, "pre")
            row = {"item": item, "config": name, "overrides": configs[name] or {}}
            stats, start = FiNEStats(), time.perf_counter()
            try:
                _, weights_copy = apply_fine_to_model(model, tok, [request], hp, stats=stats,
                                                      return_orig_weights=True)
            except (FloatingPointError, ValueError, RuntimeError) as err:
                row.update(error=f"{type(err).__name__}: {err}", edit=_edit_record(stats, time.perf_counter() - start))
            else:
                try:
                    post, _ = evaluate(model, tok, request, case_id, "post")
                finally:
                    with torch.no_grad():
                        for key, value in weights_copy.items():
                            model.get_parameter(key).copy_(value)
                case = finalize_case(pre, post, request)
                row.update(values=case_values(case), edit=_edit_record(stats, time.perf_counter() - start),
                           pre_fluency=(pre.get("fluency") or {}).get("ngram_entropy"))
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return path


def summarize_cases(path: str) -> dict:
    """{config: {metric: CI, "paired": {metric: paired difference to the first config}, counts}}."""
    from ..stats import bootstrap_ci, paired_difference

    rows = [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]
    order = list(dict.fromkeys(r["config"] for r in rows))
    values: dict[str, dict[str, dict[str, float]]] = {c: {m: {} for m in METRICS} for c in order}
    errors, steps = {c: 0 for c in order}, {c: [] for c in order}
    for r in rows:
        if "error" in r:
            errors[r["config"]] += 1
            continue
        steps[r["config"]].append(r["edit"]["steps"])
        for m in METRICS:
            v = r["values"].get(m)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                values[r["config"]][m][r["item"]] = float(v)
    out = {}
    for c in order:
        entry = {m: bootstrap_ci(list(values[c][m].values())) for m in METRICS}
        entry["errors"], entry["mean_steps"] = errors[c], (sum(steps[c]) / len(steps[c]) if steps[c] else None)
        if c != order[0]:
            entry["paired"] = {m: {k: v for k, v in paired_difference(values[c][m], values[order[0]][m]).items()
                                   if k != "items"} for m in METRICS}
        out[c] = entry
    return out


def markdown_table(summary: dict) -> str:
    from ..stats import format_ci

    first = next(iter(summary))
    head = ("| config | n | " + " | ".join(METRICS) + f" | Δ Locality vs {first} | Δ Fluency vs {first} | steps |\n"
            + "|---" * (len(METRICS) + 5) + "|\n")
    lines = []
    for c, e in summary.items():
        paired = e.get("paired", {})
        diffs = [format_ci(paired[m]) if m in paired else "-" for m in ("Locality", "Fluency")]
        n = str(e["Edit Succ."]["n"]) + (f" ({e['errors']} failed)" if e["errors"] else "")
        steps = f"{e['mean_steps']:.1f}" if e["mean_steps"] is not None else "-"
        lines.append(f"| {c} | {n} | "
                     + " | ".join(format_ci(e[m]) for m in METRICS) + f" | {' | '.join(diffs)} | {steps} |")
    return head + "\n".join(lines) + "\n"


def write_summary(out_dir: str) -> dict:
    summary = summarize_cases(os.path.join(out_dir, "cases.jsonl"))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(summary))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m easyedit_kne.fine.ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.json/md from cases.jsonl")
    args = parser.parse_args(argv)
    if not args.summary_only:
        import torch
        import yaml

        from .. import protocol
        from ..models import load_model

        torch.set_num_threads(args.threads)
        spec = load_spec(args.spec)
        with open(spec["base"], encoding="utf-8") as f:
            base = yaml.safe_load(f)
        requests, ids = protocol.split_requests(spec["dataset"], "dev", int(spec["n"]))
        protocol.check_tuning_items(spec["dataset"], ids)
        model, tok = load_model(spec["model"])
        run_ablation(model, tok, spec["configs"], base, requests, ids, args.out,
                     fluency_max_len=int(spec.get("fluency_max_len", 100)), seed=int(spec.get("seed", 0)),
                     pre_eval_dir=spec.get("pre_eval_dir"))
    print(markdown_table(write_summary(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
