"""KnowEdit benchmark runner (Hydra): edit, evaluate with EasyEdit's metrics, resume, summarize.

    python scripts/run_knowedit.py method=KNE model=smollm2-135m data=zsre data.size=8 output_dir=DIR
    python scripts/run_knowedit.py method=KNE data.type=zsre data.path=FILE data.size=8 output_dir=DIR
    python scripts/run_knowedit.py method=KNE model=path model.path=/some/hf/folder data=counterfact
    python scripts/run_knowedit.py -m method=KNE method.hparams.p=0.1,0.5,1,2,5     # one output dir per run
    python scripts/run_knowedit.py sweep=p | sweep=loc_size | sweep=batch | sweep=target_module | sweep=table
    EASYEDIT_PATH=/path/to/EasyEdit ee-venv/bin/python scripts/run_knowedit.py method=ROME ...   # EasyEdit baselines

Configuration: scripts/conf/ (config.yaml documents every key). Methods: KNE, FiNE (ours), FT-L, FT-M, LoRA,
ROME, MEMIT (EasyEdit's code, through easyedit_kne.register(); scripts/baselines.py), AdaLoRA (ours,
scripts/baselines.py). Models: `model=smollm2-135m` or `model=path model.path=/x`. Data: KnowEdit JSON files
(`data=zsre|counterfact|recent|wikibio`, or `data.type=... data.path=...`), items [offset, offset + size).

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
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))
if str(REPO_ROOT) not in sys.path:  # the package, when it is not installed
    sys.path.append(str(REPO_ROOT))

import baselines  # noqa: E402

CASES = "cases.jsonl"
PRE_CASES = "pre.jsonl"
SUMMARY = "summary.json"
RUN_CONFIG = "run_config.json"
ENSEMBLE = "ensemble.safetensors"
SEQ_STATE = "sequential_state.safetensors"
RESULT_FILES = (CASES, PRE_CASES, SUMMARY, RUN_CONFIG, ENSEMBLE, SEQ_STATE, "easyedit.log")
EDIT_MODES = ("single", "batch", "sequential")
SPLITS = ("auto", "tail", "file", "edited")
# KnowEdit files a dataset localizes on by default (split auto), next to data.path.
LOCALIZATION_FILES = {"counterfact": "train_cf.json", "wikibio": "wikibio-train-all.json"}


def _first_set(*values):
    return next((v for v in values if v is not None and str(v) not in ("None", "null", "")), None)


for _name, _fn in (("kne_repo_root", lambda: str(REPO_ROOT)), ("kne_first", _first_set),
                   ("kne_basename", lambda p: Path(str(p)).name)):
    OmegaConf.register_new_resolver(_name, _fn, replace=True)


class StopAfter(RuntimeError):
    """Raised by `stop_after`: the run stops on purpose (to exercise resuming)."""


# ------------------------------------------------------------------------------------------ results file
def parse_case_lines(data: bytes, path) -> tuple[dict[int, dict], int, int]:
    """Case records of a cases.jsonl's bytes: ({case_id: the first record of that id}, the byte offset where
    the good lines end, the number of duplicate ids). An unparsable last line (a write cut short) ends the
    good part; an unparsable line anywhere else raises (the file is damaged, not truncated)."""
    records: dict[int, dict] = {}
    offset, good_end, duplicates = 0, 0, 0
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        end = offset + len(raw)
        if raw.strip():
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or "case_id" not in rec:
                    raise ValueError("not a case record")
            except ValueError as err:
                if end == len(data):  # the last line: a write cut short
                    break
                raise ValueError(f"{path}: line {lineno} is not a case record ({err}); the file is "
                                 "damaged (not just truncated): fix or delete it") from None
            cid = int(rec["case_id"])
            if cid in records:
                duplicates += 1
            else:
                records[cid] = rec
        offset = good_end = end
    return records, good_end, duplicates


class CaseLog:
    """An append-only JSON-lines file of finished cases, keyed by "case_id", that survives being killed.

    `load()` reads it; an incomplete last line (a run killed while writing) is cut off, so the next append
    starts on a fresh line, while a bad line anywhere else is an error (the file is damaged, not truncated).
    `append()` writes one line and flushes and fsyncs it before returning.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[int, dict] = {}
        self.dropped_tail = 0
        self.duplicates = 0

    def load(self) -> dict[int, dict]:
        self.records = {}
        if not self.path.exists():
            return self.records
        data = self.path.read_bytes()
        self.records, good_end, self.duplicates = parse_case_lines(data, self.path)
        if good_end < len(data) or (good_end and not data[:good_end].endswith(b"\n")):
            self.dropped_tail = len(data) - good_end
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                if good_end and not data[:good_end].endswith(b"\n"):
                    f.seek(good_end)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        if self.duplicates:
            warnings.warn(f"{self.path}: {self.duplicates} duplicate case line(s); the first of each is used",
                          stacklevel=2)
        return self.records

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[int(record["case_id"])] = record


# ------------------------------------------------------------------------------------------------ data
def _resolve(path) -> Path:
    return Path(str(path)).expanduser().resolve()


def load_eval_requests(cfg) -> tuple[list[dict], list[int], int]:
    """(requests, case ids = their indices in the file, number of records in the file)."""
    from easyedit_kne.knowedit import load_knowedit

    path = _resolve(cfg.data.path)
    size = None if cfg.data.size is None else int(cfg.data.size)
    offset = int(cfg.data.offset or 0)
    requests = load_knowedit(path, data_type=cfg.data.type, size=size, offset=offset)
    if not requests:
        raise ValueError(f"data: no record in {path} at offset {offset}")
    with open(path, encoding="utf-8") as f:
        n_file = len(json.load(f))
    return requests, list(range(offset, offset + len(requests))), n_file


def plan_localization(cfg, eval_requests: list[dict], case_ids: list[int], n_file: int):
    """(localization requests or None for per-edit localization, description) for KNE."""
    from easyedit_kne.knowedit import load_knowedit

    loc = cfg.localization
    split = str(loc.split)
    if split not in SPLITS:
        raise ValueError(f"localization.split={split!r}: choose one of {', '.join(SPLITS)}")
    size = int(loc.size or 0)
    if size < 0:
        raise ValueError(f"localization.size={size}: give 0 (on each edited batch) or a positive count")
    if size == 0 or split == "edited":
        return None, {"split": "edited", "size": 0, "source": "each edited batch (localized per edit call)"}
    data_path = _resolve(cfg.data.path)
    data_type = str(cfg.data.type)
    loc_type = str(loc.type or data_type)
    if split == "auto":
        sibling = LOCALIZATION_FILES.get(data_type)
        if sibling and (data_path.parent / sibling).is_file() and (data_path.parent / sibling) != data_path:
            split, loc_path = "file", data_path.parent / sibling
        else:
            split, loc_path = "tail", data_path
    elif split == "file":
        if not loc.path:
            raise ValueError("localization.split=file needs localization.path (a KnowEdit JSON)")
        loc_path = _resolve(loc.path)
        if loc_path == data_path:
            split = "tail"
    else:
        loc_path = data_path
    eval_prompts = {r["prompt"] for r in eval_requests}
    eval_ids = set(case_ids)
    if split == "tail":
        items = load_knowedit(loc_path, data_type=data_type)
        chosen, skipped = [], 0
        for i in range(len(items) - 1, -1, -1):
            if len(chosen) == size:
                break
            if i in eval_ids:
                raise ValueError(
                    f"localization: the held-out tail of {loc_path.name} would need item {i}, which is evaluated "
                    f"(items {min(case_ids)}..{max(case_ids)}); lower localization.size ({size}) or data.size, or "
                    "use localization.split=file with another file")
            if items[i]["prompt"] in eval_prompts:
                skipped += 1
                continue
            chosen.append(i)
        if len(chosen) < size:
            raise ValueError(f"localization: only {len(chosen)} held-out items in {loc_path.name}, {size} asked")
        chosen.sort()
        requests = [items[i] for i in chosen]
        desc = {"split": "tail", "path": str(loc_path), "indices": [chosen[0], chosen[-1] + 1],
                "skipped_same_prompt": skipped}
    else:
        items = load_knowedit(loc_path, data_type=loc_type)
        chosen = [i for i, r in enumerate(items) if r["prompt"] not in eval_prompts][:size]
        if len(chosen) < size:
            raise ValueError(f"localization: {loc_path} has {len(chosen)} items not evaluated, {size} asked")
        requests = [items[i] for i in chosen]
        desc = {"split": "file", "path": str(loc_path), "indices": [chosen[0], chosen[-1] + 1],
                "skipped_same_prompt": chosen[-1] + 1 - len(chosen)}
    # disjointness, asserted whatever the split: no evaluated item, no evaluated prompt
    if desc["split"] == "tail":
        assert not eval_ids & set(chosen), "localization items overlap the evaluated items"
    assert not eval_prompts & {r["prompt"] for r in requests}, "localization shares a prompt with an evaluated item"
    desc.update(size=len(requests), disjoint=True)
    return requests, desc


# --------------------------------------------------------------------------------------------- methods
def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


class KNEMethod(baselines.WeightsCopyMethod):
    """KNE through `apply_kne_to_model`, with the run's ensemble (localized once) passed to every edit."""

    def __init__(self, hparams, source, loc_requests, loc_desc):
        super().__init__("KNE", hparams, source)
        from easyedit_kne.kne_main import apply_kne_to_model

        self.apply_fn = apply_kne_to_model
        self.loc_requests = loc_requests
        self.loc_desc = loc_desc
        self.ensemble = None
        self.loc_info: dict = {}

    def fingerprint_extra(self) -> dict:
        items = [[r["prompt"], r["target_new"]] for r in self.loc_requests or []]
        digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
        return {"localization": {**self.loc_desc, "items_sha256": digest}}

    def prepare(self, model, tok, *, out_dir, progress=True) -> dict:
        from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble
        from easyedit_kne.localization import localize

        if self.loc_requests is None:
            self.loc_info = {**self.loc_desc, "seconds": 0.0, "reused": False}
            return {"localization": self.loc_info}
        path = Path(out_dir) / ENSEMBLE
        items = [{"prompt": r["prompt"], "target_new": r["target_new"]} for r in self.loc_requests]
        if path.is_file():
            ensemble = KnowledgeNeuronalEnsemble.load(path)
            if ensemble.metadata.get("items") != items:
                raise ValueError(f"{path} was localized on other items; delete it (or use overwrite=true)")
            reused, seconds = True, float(ensemble.metadata.get("seconds", 0.0))
        else:
            start = time.perf_counter()
            ensemble = localize(model, tok, self.loc_requests, self.hparams, progress=progress)
            seconds = time.perf_counter() - start
            ensemble.metadata["seconds"] = round(seconds, 3)
            ensemble.save(path)
            reused = False
        ensemble.check_model(model)
        if ensemble.num_neurons == 0:
            raise ValueError("KNE: the ensemble selected no neuron; raise p or check the localization items")
        self.ensemble = ensemble
        self.loc_info = {**self.loc_desc, "seconds": round(seconds, 3), "reused": reused, "ensemble": str(path),
                         "num_neurons": ensemble.num_neurons,
                         "parameter_fraction": ensemble.parameter_fraction,
                         "modules": len(ensemble.neurons)}
        return {"localization": self.loc_info}

    def apply_kwargs(self) -> dict:
        from easyedit_kne.kne_main import EditStats

        return {"ensemble": self.ensemble, "stats": EditStats(), "progress": False}

    def edit_info(self, kwargs) -> dict:
        s = kwargs["stats"]
        return {"localize_seconds": s.localize_seconds, "train_seconds": s.train_seconds, "steps": s.steps,
                "final_loss": s.losses[-1] if s.losses else None, "num_neurons": s.num_neurons}

    def summary_info(self) -> dict:
        return {"localization": self.loc_info}


class FiNEMethod(baselines.WeightsCopyMethod):
    """FiNE through `apply_fine_to_model` (it localizes per edit)."""

    def __init__(self, hparams, source):
        super().__init__("FiNE", hparams, source)
        from easyedit_kne.fine import apply_fine_to_model

        self.apply_fn = apply_fine_to_model

    def apply_kwargs(self) -> dict:
        from easyedit_kne.fine import FiNEStats

        return {"stats": FiNEStats(), "progress": False}

    def edit_info(self, kwargs) -> dict:
        s = kwargs["stats"]
        return {"localize_seconds": s.localize_seconds, "train_seconds": s.train_seconds, "steps": s.steps,
                "num_neurons": s.num_neurons, "early_stopped": s.early_stopped}


def _our_hparams(cls, folder: str, cfg, model_path: str, runner_fields: dict):
    """hparams/<folder>/<model.hparams_name>.yaml (or method.hparams_file) + method.hparams + runner fields."""
    import yaml

    file = cfg.method.get("hparams_file")
    name = cfg.model.get("hparams_name")
    path = _resolve(file) if file else (REPO_ROOT / "hparams" / folder / f"{name}.yaml" if name else None)
    config, source = {}, f"{cls.__name__} defaults"
    if path is not None:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
            source = str(path)
        elif file:
            raise FileNotFoundError(f"method.hparams_file={file!r} does not exist")
        else:
            source = f"{cls.__name__} defaults ({path} not found)"
            warnings.warn(f"{path} not found: using {cls.__name__} defaults (plus method.hparams)", stacklevel=2)
    config = baselines.apply_overrides(config, _plain(cfg.method.get("hparams")))
    config.update(runner_fields, model_name=model_path)
    return cls.from_dict(config, source=source), source


def build_method(cfg, model, tok, model_path: str, eval_requests, case_ids, n_file) -> baselines.EditMethod:
    kind = str(cfg.method.kind)
    batch_size = 1 if cfg.edit_mode == "single" else int(cfg.batch_size)
    device = str(cfg.device)
    if kind == "kne":
        from easyedit_kne.hparams import KNEHyperParams

        loc_requests, loc_desc = plan_localization(cfg, eval_requests, case_ids, n_file)
        hparams, source = _our_hparams(KNEHyperParams, "KNE", cfg, model_path, dict(
            device=device, batch_size=batch_size, localization_size=0, localization_data=None,
            localization_data_type=None, ensemble_path=None))
        return KNEMethod(hparams, source, loc_requests, loc_desc)
    if kind == "fine":
        from easyedit_kne.fine import FiNEHyperParams

        hparams, source = _our_hparams(FiNEHyperParams, "FiNE", cfg, model_path,
                                       dict(device=device, batch_size=batch_size))
        return FiNEMethod(hparams, source)
    method_cfg = _plain(cfg.method)
    easyedit_path = cfg.easyedit.get("path")
    if kind == "adalora":
        return baselines.build_adalora_method(
            method_cfg, model_path=model_path, depth=baselines.model_depth(model), device=device,
            batch_size=batch_size, easyedit_path=easyedit_path, closest=cfg.model.get("easyedit_closest"))
    if kind == "easyedit":
        return baselines.build_easyedit_method(
            method_cfg, model=model, model_path=model_path, device=device, batch_size=batch_size,
            easyedit_path=easyedit_path, closest=str(cfg.model.easyedit_closest),
            stats_dir=str(cfg.easyedit.stats_dir),
            covariance=lambda: baselines.covariance_plan(cfg.easyedit.get("mom2_text_file"), cfg.get("knowedit_dir"),
                                                         int(cfg.easyedit.mom2_n_samples)))
    raise ValueError(f"method.kind={kind!r}: one of kne, fine, adalora, easyedit")


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


def check_run_config(out: Path, fingerprint: dict) -> str:
    """Write run_config.json, or compare with the one there; returns the fingerprint hash."""
    from easyedit_kne.atomic import write_json_atomic

    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    path = out / RUN_CONFIG
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("sha256") != digest:
            changes = _diff(old.get("config", {}), json.loads(json.dumps(fingerprint)))
            raise ValueError(
                f"{out} holds a run with another config ({'; '.join(changes[:8]) or 'see ' + str(path)}); "
                "pick another output_dir, or overwrite=true to start over")
    else:
        write_json_atomic(path, {"sha256": digest, "config": fingerprint})
    return digest


# --------------------------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, cfg, out: Path):
        self.cfg = cfg
        self.out = out
        self.progress = bool(cfg.progress)
        self.stop_after = None if cfg.stop_after is None else int(cfg.stop_after)
        self.written = 0
        self.log = CaseLog(out / CASES)
        self.context: dict = {}

    # -- bookkeeping
    def write_case(self, record: dict) -> None:
        self.log.append(record)
        self.written += 1
        if self.stop_after is not None and self.written >= self.stop_after:
            raise StopAfter(f"stop_after={self.stop_after}: stopped after writing {self.written} case(s); "
                            "rerun the same command to resume")

    def _record(self, cid, request, case, edit_info, edit_share, loc_share, eval_s, chunk) -> dict:
        return {"case_id": cid, "chunk": chunk, "request": request, "pre": case["pre"], "post": case["post"],
                "edit": {k: v for k, v in edit_info.items() if k != "seconds"},
                "timing": {"edit_s": round(edit_share, 4), "localization_s": round(loc_share, 4),
                           "eval_s": round(eval_s, 4)}}

    # -- single and batch modes
    def run_chunks(self, method, model, tok, requests, case_ids, chunk_size, evaluate):
        from tqdm.auto import tqdm

        by_id = dict(zip(case_ids, requests, strict=True))
        chunks = [case_ids[i:i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
        todo = [c for c in chunks if any(cid not in self.log.records for cid in c)]
        for chunk in tqdm(todo, desc=f"{method.name} {self.cfg.edit_mode}", disable=not self.progress):
            pending = [cid for cid in chunk if cid not in self.log.records]
            pre = {cid: evaluate(model, tok, by_id[cid], cid, "pre") for cid in pending}
            try:
                result = method.edit(model, tok, [by_id[cid] for cid in chunk])
            except Exception as err:
                if self.cfg.on_error != "record":
                    raise
                for cid in pending:
                    self.write_case({"case_id": cid, "chunk": [chunk[0], chunk[-1]], "request": by_id[cid],
                                     "error": f"{type(err).__name__}: {err}"})
                continue
            loc_s = float(result.info.get("localize_seconds") or 0.0)
            edit_s = max(0.0, result.info["seconds"] - loc_s)
            records = []
            for cid in pending:
                post, post_s = evaluate(result.model, tok, by_id[cid], cid, "post")
                case = finalize_case(pre[cid][0], post, by_id[cid])
                records.append(self._record(cid, by_id[cid], case, result.info, edit_s / len(chunk),
                                            loc_s / len(chunk), pre[cid][1] + post_s, [chunk[0], chunk[-1]]))
            model = result.restore()
            for rec in records:
                self.write_case(rec)
            self.write_summary(partial=True)
        return model

    # -- sequential mode
    def run_sequential(self, method, model, tok, requests, case_ids, chunk_size, evaluate, digest):
        from tqdm.auto import tqdm

        by_id = dict(zip(case_ids, requests, strict=True))
        pending = [cid for cid in case_ids if cid not in self.log.records]
        if not pending:
            return model
        pre_log = CaseLog(self.out / PRE_CASES)
        pre_log.load()
        for cid in tqdm([c for c in pending if c not in pre_log.records], desc="pre-edit metrics",
                        disable=not self.progress):
            metrics, seconds = evaluate(model, tok, by_id[cid], cid, "pre")
            pre_log.append({"case_id": cid, "pre": metrics, "eval_s": seconds})
        state = self.load_sequential_state(model, digest)
        if state is None:
            chunks = [case_ids[i:i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
            edit_s = loc_s = 0.0
            for chunk in tqdm(chunks, desc=f"{method.name} sequential edits", disable=not self.progress):
                result = method.edit(model, tok, [by_id[cid] for cid in chunk], sequential=True)
                model = result.model
                loc = float(result.info.get("localize_seconds") or 0.0)
                loc_s += loc
                edit_s += max(0.0, result.info["seconds"] - loc)
            model = method.finish_sequential(model)
            state = {"edit_seconds": edit_s, "localize_seconds": loc_s, "n_edits": len(chunks)}
            self.save_sequential_state(model, method.touched_parameters(), digest, state)
        n = len(case_ids)
        for cid in tqdm(pending, desc="post-edit metrics", disable=not self.progress):
            post, post_s = evaluate(model, tok, by_id[cid], cid, "post")
            pre = pre_log.records[cid]
            case = finalize_case(pre["pre"], post, by_id[cid])
            self.write_case(self._record(cid, by_id[cid], case, {}, float(state["edit_seconds"]) / n,
                                         float(state["localize_seconds"]) / n, pre["eval_s"] + post_s,
                                         [case_ids[0], case_ids[-1]]))
            if len(self.log.records) % 10 == 0:
                self.write_summary(partial=True)
        return model

    def save_sequential_state(self, model, names, digest, state) -> None:
        from safetensors.torch import save_file

        from easyedit_kne.atomic import atomic_path

        tensors = {n: model.get_parameter(n).detach().cpu().contiguous() for n in sorted(names)}
        meta = {"run_sha256": digest, "state": json.dumps(state)}
        with atomic_path(self.out / SEQ_STATE) as tmp:
            save_file(tensors, tmp, metadata=meta)

    def load_sequential_state(self, model, digest):
        import torch
        from safetensors import safe_open

        path = self.out / SEQ_STATE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("run_sha256") != digest:
                warnings.warn(f"{path} belongs to another run config; editing again", stacklevel=2)
                return None
            with torch.no_grad():
                for name in f.keys():
                    param = model.get_parameter(name)
                    param.copy_(f.get_tensor(name).to(param.device, param.dtype))
        return json.loads(meta["state"])

    # -- summary
    def write_summary(self, partial: bool) -> dict:
        from easyedit_kne.atomic import write_json_atomic

        summary = build_summary(self.log.records, self.context, complete=not partial)
        write_json_atomic(self.out / SUMMARY, summary)
        return summary


def build_summary(records: dict, context: dict, complete: bool) -> dict:
    from easyedit_kne.evaluate import summarize, table_numbers

    expected = context["case_ids"]
    done = [records[c] for c in expected if c in records]
    ok = [r for r in done if "error" not in r]
    cases = [{"pre": r["pre"], "post": r["post"]} for r in ok]
    post = summarize(cases) if cases else {}
    pre = summarize(cases, phase="pre") if cases else {}
    loc_s = float(context.get("localization_seconds") or 0.0) + sum(r["timing"]["localization_s"] for r in ok)
    timings = {
        "localization_s": round(loc_s, 3),
        "edit_s": round(sum(r["timing"]["edit_s"] for r in ok), 3),
        "evaluation_s": round(sum(r["timing"]["eval_s"] for r in ok), 3),
        "prepare_s": context.get("prepare_seconds"),
        "wall_s_this_invocation": round(time.perf_counter() - context["started"], 3),
    }
    if ok:
        timings["edit_s_per_case"] = round(timings["edit_s"] / len(ok), 4)
        timings["evaluation_s_per_case"] = round(timings["evaluation_s"] / len(ok), 4)
    summary = {
        **table_numbers(post),
        "n_cases": len(ok),
        "n_expected": len(expected),
        "n_errors": len(done) - len(ok),
        "complete": bool(complete and len(done) == len(expected)),
        "timings": timings,
        "pre_edit": table_numbers(pre),
        "by_key": {"Portability": post.get("Portability_by_key"), "Locality": post.get("Locality_by_key"),
                   "Exact_Match_Rephrase": post.get("Exact_Match_Rephrase"),
                   "Exact_Match_Portability": post.get("Exact_Match_Portability")},
        **{k: v for k, v in context.items() if k not in ("case_ids", "started", "localization_seconds",
                                                       "prepare_seconds")},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return summary


def _versions() -> dict:
    import platform

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    if "easyeditor" in sys.modules:
        out["easyeditor"] = str(baselines.easyedit_root())
    return out


def run(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict:
    """One benchmark run into `output_dir` (default: Hydra's output dir); returns the summary."""
    import torch

    from easyedit_kne.models import load_model, resolve_model_name

    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = _resolve(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.edit_mode not in EDIT_MODES:
        raise ValueError(f"edit_mode={cfg.edit_mode!r}: choose one of {', '.join(EDIT_MODES)}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size={cfg.batch_size}: give an integer >= 1")
    if cfg.edit_mode == "single" and int(cfg.batch_size) != 1:
        raise ValueError("edit_mode=single edits one case at a time: set batch_size=1, or edit_mode=batch")
    if cfg.on_error not in ("raise", "record"):
        raise ValueError(f"on_error={cfg.on_error!r}: raise or record")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.overwrite:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    started = time.perf_counter()

    requests, case_ids, n_file = load_eval_requests(cfg)
    model_path = resolve_model_name(str(cfg.model.path))
    model, tok = load_model(model_path, device=str(cfg.device), dtype=str(cfg.model.dtype))
    method = build_method(cfg, model, tok, model_path, requests, case_ids, n_file)
    chunk_size = 1 if cfg.edit_mode == "single" else int(cfg.batch_size)
    if chunk_size > 1 and not method.batchable:
        raise ValueError(f"{method.name} edits one request at a time (EasyEdit: not batchable); use batch_size=1")
    fingerprint = run_fingerprint(cfg, method, model_path)
    digest = check_run_config(out, fingerprint)

    runner = Runner(cfg, out)
    runner.log.load()
    if runner.log.dropped_tail:
        print(f"{out / CASES}: dropped an incomplete last line ({runner.log.dropped_tail} bytes) of a killed run")
    prep_start = time.perf_counter()
    prep = method.prepare(model, tok, out_dir=out, progress=runner.progress)
    prep_s = time.perf_counter() - prep_start
    loc_info = prep.get("localization") or {}
    runner.context = {
        "case_ids": case_ids, "started": started, "prepare_seconds": round(prep_s, 3),
        "localization_seconds": 0.0 if loc_info.get("split") == "edited" else float(loc_info.get("seconds") or 0),
        "method": method.name, "model": str(cfg.model.name), "model_path": model_path,
        "data": {**fingerprint["data"], "records_in_file": n_file},
        "edit_mode": str(cfg.edit_mode), "batch_size": chunk_size,
        "hparams": method.hparams_dict(), "hparams_source": method.hparams_source,
        **{k: v for k, v in prep.items() if k not in ("context_templates",)},
        "notes": method.notes, "eval": _plain(cfg.eval), "device": str(cfg.device),
        "run_config_sha256": digest, "output_dir": str(out), "versions": _versions(),
    }
    evaluate = Evaluator(cfg, method.max_length)
    if cfg.edit_mode == "sequential":
        runner.run_sequential(method, model, tok, requests, case_ids, chunk_size, evaluate, digest)
    else:
        runner.run_chunks(method, model, tok, requests, case_ids, chunk_size, evaluate)
    summary = runner.write_summary(partial=False)
    print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    t = s["timings"]
    return (f"{s['method']} on {s['data']['type']} ({s['n_cases']}/{s['n_expected']} cases, {s['edit_mode']}"
            f", bs {s['batch_size']}): Edit Succ. {f(s['Edit Succ.'])}, Portability {f(s['Portability'])}, "
            f"Locality {f(s['Locality'])}, Fluency {f(s['Fluency'])}, Exact Match {f(s['Exact Match'])}; "
            f"localization {t['localization_s']:.1f}s, edit {t['edit_s']:.1f}s, evaluation {t['evaluation_s']:.1f}s"
            f" -> {s['output_dir']}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
