"""Convergence check of the attribution quadrature: which `ig_method` and `ig_steps` select the ensemble
of the converged integral (riemann_right with m = 256)?

For each (method, steps) it reports, against the reference:
- `jaccard[p]`: Jaccard overlap of the top-p ensemble (of the scores aggregated over the requests);
- `jaccard_per_request[p]`: the same per request, averaged;
- `rel_error`: ‖s − s_ref‖ / ‖s_ref‖ of the per-request scores over all modules, averaged;
- `nodes`: quadrature nodes; `branch_rows`: the cost, rows per module and request added to the trunk row
  (a node α = 1, as in riemann_right and trapezoid, is the trunk row, which runs anyway);
- `seconds_per_request`: measured where the scores were computed in this run (cached ones are not timed).
Per-request scores go through a ScoreCache, so an interrupted run resumes where it stopped.

    python -m easyedit_kne.convergence --hparams H --data FILE --offset 1281 --size 20 --reverse \
        --configs riemann_right:10 midpoint:8 --cache DIR --out table.json

`--reverse` scores the records from the last one down, so a run stopped after k records covers the
contiguous range [offset + size - k, offset + size) (the localization split is the tail of a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

DEFAULT_CONFIGS = ([("riemann_right", m) for m in (5, 10, 20, 40)]
                   + [(method, m) for method in ("midpoint", "trapezoid") for m in (4, 5, 8, 10, 12, 16)]
                   + [("gausslegendre", m) for m in (2, 3, 4, 6, 8, 10, 12, 16)])
REFERENCE = ("riemann_right", 256)
BASELINE = ("riemann_right", 20)


def _neuron_set(ensemble) -> set:
    return {(name, int(i)) for name, idx in ensemble.neurons.items() for i in idx}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _ensemble(scores, targets, p, scope):
    from .ensemble import KnowledgeNeuronalEnsemble

    return _neuron_set(KnowledgeNeuronalEnsemble.from_scores(scores, targets, p, scope))


def _rel_error(s, ref) -> float:
    import torch

    a = torch.cat([s[n] for n in sorted(ref)])
    b = torch.cat([ref[n] for n in sorted(ref)])
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def convergence_table(model, tok, requests, hparams, cache_dir: str, configs=None, reference=REFERENCE,
                      p_values=None, progress: bool = True, on_request=None) -> dict:
    """Scores every request under every config (cached in `cache_dir`) and compares with `reference`.

    `on_request(table)` is called after each request with the table over the requests done so far.
    """
    from .attribution import attribute_per_request
    from .cache import ScoreCache, model_fingerprint
    from .modules import targets_from_hparams

    configs = list(configs or DEFAULT_CONFIGS)
    p_values = list(p_values or [hparams.p])
    targets = targets_from_hparams(model, hparams)
    cache = ScoreCache(cache_dir, fingerprint=model_fingerprint(model))
    every = [tuple(reference)] + [tuple(c) for c in configs if tuple(c) != tuple(reference)]
    scores = {c: [] for c in every}
    seconds = {c: [] for c in every}
    table = {}
    for i, request in enumerate(requests):
        for method, steps in every:
            hp = dataclasses.replace(hparams, ig_method=method, ig_steps=steps)
            misses = cache.misses
            start = time.perf_counter()
            (s,) = attribute_per_request(model, tok, [request], hp, cache=cache, progress=False)
            if cache.misses > misses:
                seconds[(method, steps)].append(time.perf_counter() - start)
            scores[(method, steps)].append(s)
            if progress:
                print(f"request {i + 1}/{len(requests)} {method} m={steps}: "
                      f"{'computed' if cache.misses > misses else 'cached'}", flush=True)
        table = _summarize(scores, seconds, targets, hparams, every, p_values, len(requests[: i + 1]))
        if on_request is not None:
            on_request(table)
    return table


def _summarize(scores, seconds, targets, hparams, every, p_values, n_requests) -> dict:
    from .attribution import aggregate
    from .quadrature import branch_rows, ig_nodes

    ref_key = every[0]
    ref = scores[ref_key]
    agg_ref = aggregate(ref, hparams.score_aggregation)
    ref_sets = {p: _ensemble(agg_ref, targets, p, hparams.selection_scope) for p in p_values}
    ref_per = {p: [_ensemble(s, targets, p, hparams.selection_scope) for s in ref] for p in p_values}
    rows = []
    for key in every:
        agg = aggregate(scores[key], hparams.score_aggregation)
        row = {"method": key[0], "steps": key[1], "nodes": len(ig_nodes(*key)),
               "branch_rows": branch_rows(*key), "jaccard": {}, "jaccard_per_request": {},
               "rel_error": sum(_rel_error(s, r) for s, r in zip(scores[key], ref, strict=True)) / len(ref),
               "seconds_per_request": (sum(seconds[key]) / len(seconds[key])) if seconds[key] else None}
        for p in p_values:
            row["jaccard"][str(p)] = jaccard(_ensemble(agg, targets, p, hparams.selection_scope), ref_sets[p])
            per = [jaccard(_ensemble(s, targets, p, hparams.selection_scope), r)
                   for s, r in zip(scores[key], ref_per[p], strict=True)]
            row["jaccard_per_request"][str(p)] = sum(per) / len(per)
        rows.append(row)
    return {"reference": {"method": ref_key[0], "steps": ref_key[1]}, "requests": n_requests,
            "score_aggregation": hparams.score_aggregation, "selection_scope": hparams.selection_scope,
            "p_values": [str(p) for p in p_values], "rows": rows,
            "choice": choose_default(rows, [str(p) for p in p_values])}


def choose_default(rows, p_values, baseline=BASELINE) -> dict | None:
    """The cheapest (fewest branch rows) config whose ensemble agrees with the reference at least as well
    as `baseline` at every p, on the aggregated and on the per-request ensembles; on a tie in cost the
    baseline's method wins (the paper's Eq. 5)."""
    base = next((r for r in rows if (r["method"], r["steps"]) == tuple(baseline)), None)
    if base is None:
        return None

    def ok(r):
        return all(r["jaccard"][p] >= base["jaccard"][p] and
                   r["jaccard_per_request"][p] >= base["jaccard_per_request"][p] for p in p_values)

    good = [r for r in rows if ok(r) and (r["method"], r["steps"]) != (REFERENCE[0], REFERENCE[1])]
    if not good:
        return None
    best = min(good, key=lambda r: (r.get("branch_rows", r["nodes"]), r["method"] != baseline[0], r["steps"]))
    return {"method": best["method"], "steps": best["steps"], "baseline": list(baseline)}


def parse_config(text: str) -> tuple[str, int]:
    """'midpoint:8' -> ('midpoint', 8), checked against the quadrature rules."""
    from .quadrature import ig_nodes

    method, _, steps = text.partition(":")
    if not steps.isdigit():
        raise ValueError(f"--configs {text!r}: write METHOD:STEPS, e.g. midpoint:8")
    ig_nodes(method, int(steps))
    return method, int(steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m easyedit_kne.convergence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", required=True)
    parser.add_argument("--data", required=True, help="KnowEdit JSON file")
    parser.add_argument("--offset", type=int, default=0, help="first record")
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--target-modules", nargs="*", default=None, help="override target_modules")
    parser.add_argument("--configs", nargs="*", default=None, metavar="METHOD:STEPS",
                        help="configs to compare with the reference (default: every config of DEFAULT_CONFIGS)")
    parser.add_argument("--reverse", action="store_true", help="score the records from the last one down")
    parser.add_argument("--p", type=float, nargs="*", default=None, help="p values to compare at")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", required=True, help="per-request score cache folder")
    parser.add_argument("--out", required=True, help="table (.json)")
    args = parser.parse_args(argv)

    import torch

    from .atomic import write_json_atomic
    from .hparams import KNEHyperParams
    from .knowedit import load_knowedit
    from .models import load_model

    torch.set_num_threads(args.threads)
    hparams = KNEHyperParams.from_hparams(args.hparams)
    if args.target_modules:
        hparams.target_modules = args.target_modules
        hparams.validate()
    model, tok = load_model(hparams.model_name)
    requests = load_knowedit(args.data, size=args.size, offset=args.offset)
    if args.reverse:
        requests = requests[::-1]
    configs = [parse_config(c) for c in args.configs] if args.configs else None

    def write(table):
        n = table["requests"]
        end = args.offset + len(requests)
        records = [end - n, end] if args.reverse else [args.offset, args.offset + n]
        table = dict(table, data=args.data, records=records,
                     target_modules=hparams.target_modules, model=str(hparams.model_name),
                     threads=args.threads)
        write_json_atomic(args.out, table, indent=1)

    convergence_table(model, tok, requests, hparams, args.cache, configs=configs, p_values=args.p,
                      on_request=write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
