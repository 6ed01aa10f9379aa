"""KnowEdit benchmark runner (Hydra): edit, evaluate with EasyEdit's metrics, resume, summarize.

    easyedit-kne knowedit method=KNE model=smollm2-135m data=zsre data.size=8 output_dir=DIR   # installed
    python -m easyedit_kne knowedit ...                      # the same; python scripts/run_knowedit.py ... in a clone
    python scripts/run_knowedit.py method=KNE model=smollm2-135m data=zsre data.size=8 output_dir=DIR
    python scripts/run_knowedit.py method=KNE data.type=zsre data.path=FILE data.size=8 output_dir=DIR
    python scripts/run_knowedit.py method=KNE model=path model.path=/some/hf/folder data=counterfact
    python scripts/run_knowedit.py -m method=KNE method.hparams.p=0.1,0.5,1,2,5     # one output dir per run
    python scripts/run_knowedit.py sweep=p | sweep=loc_size | sweep=batch | sweep=target_module | sweep=table
    EASYEDIT_PATH=/path/to/EasyEdit ee-venv/bin/python scripts/run_knowedit.py method=ROME ...   # EasyEdit baselines
    python scripts/run_knowedit.py ... data.shard=0/2 output_dir=DIR   # shard 0 of 2, in DIR/shard-0-of-2
    python scripts/run_knowedit.py -m ... hydra/launcher=joblib data.shard=0/2,1/2   # both shards in parallel

Configuration: easyedit_kne/bench/conf/ (package data; config.yaml documents every key). Methods: KNE,
FiNE (ours), FT-L, FT-M, LoRA, ROME, MEMIT (EasyEdit's code, through easyedit_kne.register();
easyedit_kne/bench/easyedit_methods.py), AdaLoRA (ours, easyedit_kne/bench/adalora.py). Models:
`model=smollm2-135m` or `model=path model.path=/x`. Data: KnowEdit JSON files (`data=zsre|counterfact|recent|wikibio`
under `knowedit_dir`, or `data.type=... data.path=...`), items [offset, offset + size). KnowEdit is never
downloaded: point `knowedit_dir` (or KNOWEDIT_DIR) at your copy of zjunlp/KnowEdit.

What a run does
---------------
1. Loads the model (easyedit_kne.models.load_model) and the requests (easyedit_kne.knowedit.load_knowedit).
2. KNE: localizes the knowledge neuronal ensemble ONCE on `localization.size` items disjoint from the evaluated
   ones (counterfact: train_cf.json; wikibio: wikibio-train-all.json; zsre / recent: the last items of the same
   file, checked not to overlap the evaluated slice nor share a prompt with it), saves it to
   `ensemble.safetensors` and passes it to every `apply_kne_to_model(..., ensemble=...)`. `localization.size=0`
   (or `split=edited`) localizes on each edited batch instead.
3. Edits and evaluates (easyedit_kne.evaluate: EasyEdit's rewrite / rephrase / portability accuracy,
   locality against the pre-edit outputs, fluency, plus greedy exact match):
   * single: per case, pre-edit metrics, edit, post-edit metrics, roll back;
   * batch: per chunk of `batch_size` cases, the same, rolled back after each chunk;
   * sequential: pre-edit metrics of every case (pre.jsonl), then every chunk edited in turn without roll back
     (the edited weights are checkpointed to sequential_state.safetensors), then post-edit metrics of all.
4. Appends one JSON line per case to `cases.jsonl` as it goes (flush + fsync per line) and rewrites
   `summary.json` (atomically) after each chunk and at the end: Edit Succ., Portability, Locality, Fluency
   (x100 as in the KnowEdit tables), exact match, case counts, timings (localization, edit, evaluation).

Resuming: rerun the same command. Finished case ids are read from cases.jsonl and skipped (a truncated last
line from a killed run is cut off first; a batch chunk that was cut in the middle is edited again and only its
missing cases are written), the ensemble is reused, and a sequential run reloads its checkpoint. The
result-relevant config is kept in run_config.json; rerunning into the same directory with another config is
refused (overwrite=true starts over).

Sharding (`data.shard=K/N`, easyedit_kne/bench/shards.py): the run's edit chunks are dealt round-robin to N shards;
shard K runs its chunks in <run dir>/shard-K-of-N/ (resumable as above), with the ensemble localized on the same
held-out items as the whole run; compare.py merges the shard folders of a run into one (docs/distributed-runs.md)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import easyedit_methods, portable
from .case_log import CASES, RESULT_FILES, RUN_CONFIG, StopAfter
from .checkpoints import checkpoint_sizes, plan_checkpoints
from .config import CONF_DIR, register_resolvers
from .evaluator import Evaluator
from .methods import build_method
from .ours import _plain
from .requests import _resolve, load_eval_requests
from .runner import Runner
from .shards import parse_shard, register_resolver, select_shard, shard_info, shard_output_dir
from .summary import format_summary

register_resolvers()
register_resolver()
EDIT_MODES = ("single", "batch", "sequential")
__all__ = ["CASES", "StopAfter", "main", "run"]


# ------------------------------------------------------------------------------------------ run config
def run_fingerprint(cfg, method, model_path: str) -> dict:
    """Everything that changes the numbers of a case (the resume check compares it)."""
    data = {"type": str(cfg.data.type), "path": str(_resolve(cfg.data.path)), "size": cfg.data.size,
            "offset": int(cfg.data.offset or 0)}
    evaluation = _plain(cfg.eval)
    return {
        "method": str(cfg.method.name), "kind": str(cfg.method.kind), "hparams": method.hparams_dict(),
        "hparams_source": method.hparams_source, "method_extra": method.fingerprint_extra(),
        "model": {"path": model_path, "dtype": str(cfg.model.dtype)}, "data": data,
        "edit_mode": str(cfg.edit_mode), "batch_size": 1 if cfg.edit_mode == "single" else int(cfg.batch_size),
        "eval": evaluation, "device": str(cfg.device),
    }


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def without_added_defaults(old: dict, new: dict, defaults: dict) -> dict:
    """`new` less the hparams fields that `old` lacks and `new` holds at their default (fields added to the
    hparams after `old` was written: at their default they change nothing)."""
    old_hp, new_hp = old.get("hparams"), new.get("hparams")
    if not isinstance(old_hp, dict) or not isinstance(new_hp, dict):
        return new
    kept = {k: v for k, v in new_hp.items() if k in old_hp or k not in defaults or v != defaults[k]}
    return dict(new, hparams=kept)


def check_run_config(out: Path, fingerprint: dict, defaults: dict | None = None) -> str:
    """Write run_config.json, or compare with the one there; returns the fingerprint hash (the stored one when
    the two differ only by hparams fields added since, at their `defaults`: the file is then left as it is)."""
    from easyedit_kne.atomic import write_json_atomic

    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    path = out / RUN_CONFIG
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("sha256") != digest:
            new = json.loads(json.dumps(fingerprint))
            if old.get("config") == without_added_defaults(old.get("config") or {}, new, defaults or {}):
                return str(old["sha256"])
            changes = _diff(old.get("config", {}), new)
            raise ValueError(
                f"{out} holds a run with another config ({'; '.join(changes[:8]) or 'see ' + str(path)}); "
                "pick another output_dir, or overwrite=true to start over")
    else:
        write_json_atomic(path, {"sha256": digest, "config": fingerprint})
    return digest


def _versions() -> dict:
    import platform

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    if "easyeditor" in sys.modules:
        out["easyeditor"] = str(easyedit_methods.easyedit_root())
    return out


def run(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict:
    """One benchmark run into `output_dir` (default: Hydra's output dir); returns the summary."""
    import torch

    from easyedit_kne.models import load_model, resolve_model_name

    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    shard = parse_shard(cfg.data.get("shard"))
    out = shard_output_dir(_resolve(output_dir), shard)
    if cfg.edit_mode not in EDIT_MODES:
        raise ValueError(f"edit_mode={cfg.edit_mode!r}: choose one of {', '.join(EDIT_MODES)}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size={cfg.batch_size}: give an integer >= 1")
    if cfg.edit_mode == "single" and int(cfg.batch_size) != 1:
        raise ValueError("edit_mode=single edits one case at a time: set batch_size=1, or edit_mode=batch")
    if cfg.on_error not in ("raise", "record"):
        raise ValueError(f"on_error={cfg.on_error!r}: raise or record")
    if shard is not None and cfg.edit_mode == "sequential":
        raise ValueError(f"data.shard={cfg.data.shard}: edit_mode=sequential edits every item into one model, so "
                         "it cannot be split into shards; drop data.shard (or use edit_mode=single|batch)")
    chunk_size = 1 if cfg.edit_mode == "single" else int(cfg.batch_size)
    sizes = checkpoint_sizes(cfg, None if cfg.data.size is None else int(cfg.data.size), chunk_size)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.overwrite:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    started = time.perf_counter()

    requests, case_ids, n_file = load_eval_requests(cfg)
    run_ids = case_ids if shard is None else select_shard(case_ids, chunk_size, shard)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_name(str(cfg.model.path))
    model, tok = load_model(model_path, device=str(cfg.device), dtype=str(cfg.model.dtype))
    # the whole slice: every shard plans the same localization items
    method = build_method(cfg, model, tok, model_path, requests, case_ids, n_file)
    if chunk_size > 1 and not method.batchable:
        raise ValueError(f"{method.name} edits one request at a time (EasyEdit: not batchable); use batch_size=1")
    fingerprint = portable.portable_fingerprint(run_fingerprint(cfg, method, model_path), cfg, out, model, model_path)
    portable.migrate_run_config(out, fingerprint, cfg, model_path)
    digest = check_run_config(out, fingerprint, method.hparams_defaults())

    runner = Runner(cfg, out)
    runner.log.load()
    if runner.log.dropped_tail:
        print(f"{out / CASES}: dropped an incomplete last line ({runner.log.dropped_tail} bytes) of a killed run")
    prep_start = time.perf_counter()
    prep = method.prepare(model, tok, out_dir=out, progress=runner.progress)
    prep_s = time.perf_counter() - prep_start
    loc_info = prep.get("localization") or {}
    runner.context = {
        "case_ids": run_ids, "started": started, "prepare_seconds": round(prep_s, 3),
        "localization_seconds": 0.0 if loc_info.get("split") == "edited" else float(loc_info.get("seconds") or 0),
        "method": str(cfg.method.name), "model": str(cfg.model.name), "model_path": model_path,  # KNE-paper, not KNE
        "data": {**fingerprint["data"], "records_in_file": n_file},
        "edit_mode": str(cfg.edit_mode), "batch_size": chunk_size,
        "hparams": method.hparams_dict(), "hparams_source": method.hparams_source,
        **{k: v for k, v in prep.items() if k not in ("context_templates",)},
        "notes": method.notes, "eval": _plain(cfg.eval), "device": str(cfg.device),
        "run_config_sha256": digest, "output_dir": str(out), "versions": _versions(),
    }
    runner.context = portable.portable_context(runner.context, cfg, out, model_path)
    if shard is not None:
        runner.context["shard"] = shard_info(shard, run_ids, case_ids)
        by_id = dict(zip(case_ids, requests, strict=True))
        requests, case_ids = [by_id[c] for c in run_ids], run_ids
    pre_dir = cfg.get("pre_eval_dir")
    evaluate = Evaluator(cfg, method.max_length, None if pre_dir in (None, "") else _resolve(pre_dir))
    if cfg.edit_mode == "sequential":
        def fingerprint_of(sized, ck_out):
            return portable.portable_fingerprint(run_fingerprint(sized, method, model_path), sized, ck_out, model,
                                                 model_path)

        def check_config(ck_out, ck_fingerprint, defaults):
            portable.migrate_run_config(ck_out, ck_fingerprint, cfg, model_path)
            return check_run_config(ck_out, ck_fingerprint, defaults)

        plan = plan_checkpoints(cfg, out, sizes, case_ids, runner.context, fingerprint_of=fingerprint_of,
                                check_config=check_config, defaults=method.hparams_defaults(), runner_cls=Runner)
        runner.run_sequential(method, model, tok, requests, case_ids, chunk_size, evaluate, digest, plan)
    else:
        runner.run_chunks(method, model, tok, requests, case_ids, chunk_size, evaluate)
    summary = runner.write_summary(partial=False)
    print(format_summary(summary))
    return summary


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """The Hydra command line (`easyedit-kne knowedit ...`, `python scripts/run_knowedit.py ...`): sys.argv[1:]
    are Hydra overrides (`-m` for a multirun)."""
    run(cfg)


if __name__ == "__main__":
    main()
