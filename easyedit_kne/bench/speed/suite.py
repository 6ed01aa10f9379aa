"""Speed and memory of KNE's localization and editing, measured side by side in one process.

Measures, on one model (default SmolLM2-135M) and ZsRE requests (of the localization split by default):
  0. the issue's targets (targets.py): the default path vs the naive Eq. 5 m = 20 on one request (≥ 10×),
     with their ensembles' agreement; items/s of the default path vs today's fast path over 20 requests
     (≥ 3×); items/s vs ig_request_batch 1/4/8 (`--sections targets` runs this part only);
  1. localization of one request: the fast path (`attribute_request`) vs the straightforward Eq. 5
     (`attribute_request_naive`: module by module, step by step, autograd on the scaled weight), with
     their agreement; peak memory of the fast path for target modules of different sizes and for
     several `ig_batch_size` values;
  2. localization throughput (items/s) of the fast path;
  3. how localization time grows with `ig_steps` and with the number of target modules;
  4. one training step (forward + backward + Adam) of KNE's sparse update vs a dense masked ΔW (the
     authors' layout) vs a forward/backward of the frozen model;
  5. edit time per request: KNE (edit only / with localization) vs FT-L vs LoRA, same loss and steps.
Only ratios taken in this one process are comparable across machines; absolute times are labelled with
the machine, its load, torch's thread count and the dtype. Writes the Markdown report to `--out`
(atomically) and prints it.

    python scripts/bench_speed.py                      # full run -> docs/performance.md
    python scripts/bench_speed.py --quick --out /tmp/perf.md
    python scripts/bench_speed.py --naive-modules 6    # time the naive path on 6 of 30 modules only
    python scripts/bench_speed.py --sections targets   # §0 only"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ...attribution import aggregate
from ...ensemble import KnowledgeNeuronalEnsemble
from ...modules import find_blocks, find_target_modules
from ...tokens import encode_requests
from ..config import default_knowedit_dir, repo_root
from .editing import edit_times, training_step_times
from .localization import (
    localization_memory,
    localization_scaling,
    localization_speed,
    localization_throughput,
    target_layers,
    warm_up,
)
from .measure import QUICK, BenchConfig, load_average, machine_info
from .report import render, write_atomic
from .targets import issue_targets


# --------------------------------------------------------------------------------------------------------
# A whole suite on one model
# --------------------------------------------------------------------------------------------------------
@dataclass
class Suite:
    label: str
    info: dict
    model_desc: str
    cfg: BenchConfig
    load_start: str = ""
    load_end: str = ""
    data_desc: str = ""
    results: dict = field(default_factory=dict)
    seconds: float = 0.0


def describe_model(model) -> str:
    c = model.config
    n_layers = len(find_blocks(model)[1])
    d = getattr(c, "hidden_size", getattr(c, "n_embd", "?"))
    d_ff = getattr(c, "intermediate_size", getattr(c, "n_inner", "?"))
    n_params = sum(p.numel() for p in model.parameters())
    return (f"{type(model).__name__} ({n_params / 1e6:.1f} M parameters, {n_layers} layers, d_model={d}, "
            f"d_ff={d_ff})")


def run_suite(model, tok, requests, cfg: BenchConfig, device, label: str = "", dtype=None,
              data_desc: str = "") -> Suite:
    """Every measurement on one model; `requests` needs cfg.n_items items (localization items first)."""
    if len(requests) < cfg.n_items:
        raise ValueError(f"run_suite needs {cfg.n_items} requests, got {len(requests)}")
    dtype = dtype or next(model.parameters()).dtype
    suite = Suite(label or f"{device}, {str(dtype).replace('torch.', '')}", machine_info(device, dtype),
                  describe_model(model), cfg, load_start=load_average(), data_desc=data_desc)
    start = time.perf_counter()
    model.eval()
    loc_items = requests[:cfg.throughput_items]
    edit_items = requests[cfg.throughput_items:]
    targets = find_target_modules(model, [cfg.target_suffix], target_layers(model, cfg.n_modules))
    res = suite.results
    warm_up(model, tok, loc_items[0], targets, cfg, device)
    res["targets"] = issue_targets(model, tok, requests[:cfg.targets_items], targets, cfg, device,
                                   sweep_items=cfg.targets_sweep_items)
    if cfg.sections == "targets":
        suite.seconds = time.perf_counter() - start
        suite.load_end = load_average()
        return suite
    res["speed"] = localization_speed(model, tok, loc_items[0], targets, cfg, device)
    res["memory"] = localization_memory(model, tok, loc_items[0], cfg, device)
    res["throughput"] = localization_throughput(model, tok, loc_items, targets, cfg, device)
    res["scaling"] = localization_scaling(model, tok, loc_items[0], targets, cfg, device,
                                          res["speed"]["naive_per_module_step_s"])
    # the ensemble used for editing: localized on the throughput items, disjoint from the edited items
    ensemble = KnowledgeNeuronalEnsemble.from_scores(
        aggregate(res["throughput"]["scores"], "max"), targets, cfg.p, "global")
    res["ensemble"] = dict(neurons=ensemble.num_neurons, modules=len(ensemble.neurons),
                           fraction=ensemble.parameter_fraction)
    batch = encode_requests(tok, edit_items[:cfg.train_batch], cfg.max_length)
    res["train"] = training_step_times(model, batch, ensemble, cfg, device)
    res["edit"] = edit_times(model, tok, edit_items[:cfg.edit_requests], ensemble, cfg, device)
    for r in (res["speed"], res["throughput"]):
        r.pop("scores", None)  # keep the results small
    suite.seconds = time.perf_counter() - start
    suite.load_end = load_average()
    return suite


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------
def load_requests(path, n: int, offset: int = 0) -> list[dict]:
    try:
        from easyedit_kne.knowedit import load_knowedit
    except ImportError:
        load_knowedit = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if load_knowedit is not None:
            return load_knowedit(path, data_type="zsre", size=n, offset=offset)
    import json

    with open(path, encoding="utf-8") as f:
        raw = json.load(f)[offset:offset + n]
    return [{"prompt": r.get("prompt", r.get("src")), "target_new": r.get("target_new", r.get("alt")),
             "subject": r.get("subject", "")} for r in raw]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="config name or local HF folder")
    ap.add_argument("--data", default=str(default_knowedit_dir() / "zsre" / "ZsRE-test-all.json"),
                    help="KnowEdit ZsRE JSON (your copy of zjunlp/KnowEdit)")
    ap.add_argument("--out", default=str((repo_root() or Path(".")) / "docs" / "performance.md"),
                    help="Markdown report (default: docs/performance.md in a clone, else ./docs/performance.md)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model dtype (CPU suite)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: the CPU suite, plus a CUDA bf16 suite when a GPU is available")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer modules, steps and requests")
    ap.add_argument("--naive-modules", type=int, default=None,
                    help="time the naive path on K evenly spaced modules and extrapolate (default: all)")
    ap.add_argument("--modules", type=int, default=None, help="number of target modules (default 30)")
    ap.add_argument("--ig-steps", type=int, default=None)
    ap.add_argument("--edit-requests", type=int, default=None)
    ap.add_argument("--offset", type=int, default=1101,
                    help="first ZsRE record (default 1101: the localization split, never the test items)")
    ap.add_argument("--sections", default="all", choices=["all", "targets"], help="targets: §0 only")
    ap.add_argument("--targets-items", type=int, default=None, help="§0 (b): requests timed (default 20)")
    ap.add_argument("--sweep-items", type=int, default=None,
                    help="§0: requests of the ig_request_batch sweep (default 8; 0: all of §0 (b)'s, reusing its runs)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def config_from_args(args) -> BenchConfig:
    cfg = BenchConfig(**(QUICK if args.quick else {}))
    overrides = {"naive_modules": args.naive_modules, "n_modules": args.modules, "ig_steps": args.ig_steps,
                 "edit_requests": args.edit_requests, "targets_items": args.targets_items,
                 "targets_sweep_items": args.sweep_items}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return replace(cfg, progress=not args.no_progress, sections=args.sections)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from easyedit_kne.models import load_model

    cfg = config_from_args(args)
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = load_average()
    runs = []
    if args.device in ("auto", "cpu"):
        runs.append(("cpu", DTYPES[args.dtype]))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        runs.append(("cuda", torch.bfloat16 if args.device == "auto" else DTYPES[args.dtype]))
    requests = load_requests(args.data, cfg.n_items, args.offset)
    suites = []
    for device, dtype in runs:
        model, tok = load_model(args.model, device=device, dtype=dtype)
        torch.manual_seed(0)
        suites.append(run_suite(model, tok, requests, cfg, device, dtype=dtype,
                                data_desc=f"{args.data}, records {args.offset}-{args.offset + len(requests) - 1}"))
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    text = render(suites, command, args.quick, started, load_start, load_average())
    write_atomic(args.out, text)
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
