"""The resumable study: Optuna with a text journal, a JSONL of every trial, the best YAML.

Outputs in `out_dir` (text, so they can be committed): study.journal (Optuna's JournalStorage: rerunning
the same command resumes the study), config.yaml (the study config), trials.jsonl (one line per finished
trial: number, state, parameters, hparams, per-dataset KnowEdit summary, score, item ids, seconds) and
best.yaml (the best trial's hparams, with a header saying where it came from).
"""

from __future__ import annotations

import json
import os
import time

import yaml

from . import space as sp


def _storage(out_dir: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(os.path.join(out_dir, "study.journal")))


def _append(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_best(out_dir: str, study, cfg: dict, items) -> str | None:
    done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    hp = best.user_attrs["hparams"]
    dev = ", ".join(f"{it.dataset}: {it.ids[0]} .. {it.ids[-1]} ({len(it.ids)})" for it in items)
    obj = cfg["objective"]
    header = [
        # the folder by its name only: best.yaml is committed beside the study, and a machine path must not be
        f"# Tuned by `easyedit-kne tune` (study {study.study_name!r}, folder "
        f"{os.path.basename(os.path.normpath(out_dir))}), trial {best.number} of "
        f"{len(done)} complete, {time.strftime('%Y-%m-%d')}.",
        f"# Objective: maximize mean({', '.join(obj.get('maximize', []))}) subject to "
        f"{obj['constraint']['metric']} >= {obj['constraint']['min']} (score {best.value:.2f}).",
        f"# Dev items: {dev}; localization: {best.user_attrs.get('localization')}.",
        f"# Dev results: {json.dumps(best.user_attrs.get('table'))}",
    ]
    path = os.path.join(out_dir, "best.yaml")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n" + yaml.safe_dump(hp, sort_keys=False))
    os.replace(path + ".tmp", path)
    return path


def run_study(cfg: dict, out_dir: str, n_trials: int, model=None, tok=None, knowedit_root=None,
              study_name: str = "tune", seed: int = 0, timeout: float | None = None, progress: bool = False):
    """Run (or resume) the study until it holds `n_trials` finished trials (or `timeout` seconds pass)."""
    import optuna

    from .evaluator import Evaluator, load_items

    items = load_items(cfg["datasets"], int(cfg.get("localization_items") or 0), knowedit_root)  # refuses test
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    if model is None:
        from ..models import load_model

        model, tok = load_model(cfg["model"])
    pr = cfg.get("pruner") or {}
    pruner = optuna.pruners.MedianPruner(n_startup_trials=int(pr.get("n_startup_trials", 4)),
                                         n_warmup_steps=int(pr.get("n_warmup_steps", 5)))
    study = optuna.create_study(study_name=study_name, storage=_storage(out_dir), direction="maximize",
                                load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    if not study.trials:  # informed starting points (e.g. the shipped YAML, the authors' settings), run first
        for params in cfg.get("seeds") or []:
            study.enqueue_trial(sp.check_seed(params, cfg["space"]))
    evaluator = Evaluator(model, tok, cfg["method"], items, os.path.join(out_dir, "cache"),
                          fluency=bool(cfg.get("fluency", False)), progress=progress)
    base = dict(cfg.get("base") or {}, alg_name=cfg["method"], model_name=cfg["model"])
    jsonl = os.path.join(out_dir, "trials.jsonl")

    def objective(trial):
        params = sp.suggest(trial, cfg["space"])
        hp, mode = sp.to_hparams(base, params)
        trial.set_user_attr("hparams", hp)
        trial.set_user_attr("localization", mode)

        def report(step, cases):
            from ..evaluate import summarize

            value = sp.score({d: summarize(c) for d, c in cases.items() if c}, cfg["objective"])
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step + 1} items (running score {value:.2f})")

        record = {"number": trial.number, "params": params, "hparams": hp, "localization": mode,
                  "dev_items": {it.dataset: it.ids for it in items},
                  "localization_items": {it.dataset: it.loc_ids for it in items} if mode == "shared" else {}}
        try:
            res = evaluator.evaluate(hp, mode, report)
        except optuna.TrialPruned:
            _append(jsonl, dict(record, state="PRUNED"))
            raise
        except (ValueError, FloatingPointError) as err:  # a configuration that cannot run is a failed trial
            _append(jsonl, dict(record, state="FAIL", error=str(err)))
            raise optuna.TrialPruned(str(err)) from err
        value = sp.score(res["summary"], cfg["objective"])
        table = {d: {k: (round(s[k], 2) if s.get(k) is not None else None)
                     for k in ("Edit_Succ", "Portability", "Locality", "Rephrase", "Fluency")}
                 for d, s in res["summary"].items()}
        trial.set_user_attr("table", table)
        _append(jsonl, dict(record, state="COMPLETE", score=value, table=table, summary=res["summary"],
                            cases=res["cases"], seconds=res["seconds"]))
        return value

    _fail_interrupted(study)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in study.trials)
    remaining = max(0, n_trials - finished)
    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=())
    write_best(out_dir, study, cfg, items)
    return study


def _fail_interrupted(study) -> None:
    """Trials left RUNNING by a killed process (this resumes them) are marked FAIL, so the sampler and the
    trial count skip them instead of waiting for a worker that no longer exists."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def add_parser(sub) -> None:
    """The `tune` subcommand of `easyedit-kne`."""
    p = sub.add_parser("tune", help="search KNE/FiNE hparams on the dev split (Optuna; resumable)")
    p.add_argument("--config", default=None, help="study YAML (default: easyedit_kne/tuning/kne_space.yaml)")
    p.add_argument("--method", default="KNE", help="KNE | FiNE (when --config is not given)")
    p.add_argument("--model", default=None, help="config name or HF folder (default: the config's model)")
    p.add_argument("--out", required=True, help="output folder (study.journal, trials.jsonl, best.yaml)")
    p.add_argument("--n-trials", type=int, default=20, help="finished trials the study should hold")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--zsre", type=int, default=None, help="ZsRE dev items per trial (overrides the config)")
    p.add_argument("--counterfact", type=int, default=None, help="counterfact dev items per trial")
    p.add_argument("--recent", type=int, default=None, help="recent dev items per trial")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm bars (the localization and each trial's items show one by default)")
    p.set_defaults(fn=_main)


def _main(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = sp.load_config(args.config, args.method, {"model": args.model})
    counts = {k: getattr(args, k) for k in ("zsre", "counterfact", "recent") if getattr(args, k) is not None}
    if counts:
        cfg["datasets"] = {**cfg["datasets"], **counts}
    study = run_study(cfg, args.out, args.n_trials, timeout=args.timeout, seed=args.seed, progress=args.progress)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    print(f"{len(study.trials)} trials ({len(done)} complete) in {args.out}; best: "
          f"{max((t.value for t in done), default=None)}")
    return 0
