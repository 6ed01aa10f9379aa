"""EasyEdit's baselines: FT-L, FT-M, LoRA, ROME, MEMIT
---------------------------------------------------
They run EasyEdit's own apply functions (`ALG_DICT[alg_name]` after `easyedit_kne.register()`), so EasyEdit
must be importable (`EASYEDIT_PATH` or `easyedit.path`; in practice EasyEdit's venv, see
scripts/setup_easyedit_env.sh). Nothing of EasyEdit is copied into this repository: the hparams object is
built at run time from EasyEdit's YAML for the closest model (`model.easyedit_closest`, e.g.
hparams/ROME/llama3.2-3b.yaml) with

* `model_name` = our model's local folder, `device` = the run's device, `fp16`/`model_parallel` off,
  `batch_size` = the runner's batch size (one training batch per edit call, as in EasyEdit's batch_edit);
* `layers` rescaled to the model's depth when the source model has a different number of blocks (a
  contiguous block keeps its length and moves to round(first * depth / source_depth)), `v_loss_layer` = the
  last block;
* the method's fixed values (FT-L: objective_optimization prompt_last, FT-M: target_new; LoRA: lora_type
  lora, because EasyEdit's LoRA YAMLs say adalora, which fails with peft >= 0.14);
* `stats_dir`, `mom2_dataset`, `mom2_n_samples` pointing at covariance statistics computed here (below);
* last, the non-null values of the run's `method.hparams`.

Tokenizer as EasyEdit's BaseEditor leaves it: left padding, except right padding for ROME/MEMIT. ROME's and
MEMIT's context templates (sampled once per process by EasyEdit) are drawn under a fixed seed in
`prepare()`, so a resumed run uses the same templates. EasyEdit's prints go to `<out_dir>/easyedit.log`."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .covariance import CovariancePlan, ensure_covariance_stats
from .method_base import EditMethod, PeftMethod, WeightsCopyMethod, apply_overrides

# Number of blocks of the models EasyEdit ships hparams for (to rescale their `layers` to another depth).
EASYEDIT_MODEL_DEPTHS = {
    "gpt2-xl": 48, "gpt-j-6B": 28, "llama-7b": 32, "llama3-8b": 32, "llama3.1-8b": 32, "llama3.2-3b": 28,
    "mistral-7b": 32, "qwen-7b": 32, "qwen2-7b": 28, "qwen2.5-7b": 28, "baichuan-7b": 32, "internlm-7b": 32,
    "chatglm2-6b": 28, "chatglm4-9b": 40,
}
# EasyEdit hparams classes by alg_name.
EASYEDIT_HPARAMS_CLASSES = {
    "FT": ("easyeditor.models.ft", "FTHyperParams"),
    "LoRA": ("easyeditor.models.lora", "LoRAHyperParams"),
    "ROME": ("easyeditor.models.rome", "ROMEHyperParams"),
    "MEMIT": ("easyeditor.models.memit", "MEMITHyperParams"),
}
# BaseEditor: these algorithms get right padding on llama/mistral/qwen tokenizers, every other one left.
RIGHT_PADDING_ALGS = ("ROME", "MEMIT", "EMMET", "EAMET", "R-ROME", "AlphaEdit", "CORE", "SPHERE")
# Fields the runner sets on every EasyEdit hparams object; dropped where the class has no such field.
RUNNER_FIELDS = ("batch_size", "model_parallel", "fp16")


class EasyEditUnavailable(ImportError):
    pass


def import_easyedit(path: str | None):
    """Register KNE/FiNE into EasyEdit and return its `ALG_DICT` module; EasyEditUnavailable if it fails."""
    if path:
        os.environ["EASYEDIT_PATH"] = str(Path(path).expanduser().resolve())
    try:
        import easyedit_kne

        easyedit_kne.register()
        return importlib.import_module("easyeditor.util.alg_dict")
    except ImportError as err:
        raise EasyEditUnavailable(
            "this method runs through EasyEdit, which is not importable "
            f"(EASYEDIT_PATH={os.environ.get('EASYEDIT_PATH')!r}): {err}\n"
            "Set EASYEDIT_PATH (or easyedit.path=...) to an EasyEdit checkout "
            "(git clone https://github.com/zjunlp/EasyEdit) and run with a Python that has EasyEdit's "
            "requirements, e.g. `EASYEDIT_PATH=/path/to/EasyEdit ee-venv/bin/python scripts/run_knowedit.py ...` "
            "(scripts/setup_easyedit_env.sh builds ee-venv). KNE, FiNE and AdaLoRA run without EasyEdit.") from err


def easyedit_root() -> Path:
    """The EasyEdit checkout of the imported `easyeditor` (its hparams/ folder is there)."""
    mod = importlib.import_module("easyeditor")
    return Path(mod.__file__).resolve().parent.parent


def model_depth(model) -> int:
    cfg = getattr(model, "config", model)
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    raise ValueError("cannot tell the number of blocks of the model (config.num_hidden_layers / n_layer)")


def rescale_layers(layers: list[int], source_depth: int, depth: int) -> list[int]:
    """Layer indices of a `source_depth`-block model moved to a `depth`-block model.

    A contiguous block keeps its length and starts at round(first * depth / source_depth); other lists
    are mapped index by index. Indices stay within [0, depth).
    """
    if not layers or source_depth == depth:
        return [min(int(x), depth - 1) for x in layers]
    layers = [int(x) for x in layers]
    if layers == list(range(layers[0], layers[0] + len(layers))):
        start = min(round(layers[0] * depth / source_depth), max(0, depth - len(layers)))
        return list(range(start, start + min(len(layers), depth)))
    return sorted({min(depth - 1, round(x * depth / source_depth)) for x in layers})


def adapt_easyedit_config(config: dict, *, source_name: str, model_path: str, depth: int, device: str,
                          batch_size: int, fixed: dict | None = None, overrides: dict | None = None,
                          extra: dict | None = None) -> tuple[dict, list[str]]:
    """EasyEdit's YAML values for `source_name`, adapted to our model (see the module docstring)."""
    config = dict(config)
    notes = []
    config.update(fixed or {})
    config.update(model_name=model_path, device=device, model_parallel=False, batch_size=batch_size)
    if "fp16" in config:
        config["fp16"] = False
    source_depth = EASYEDIT_MODEL_DEPTHS.get(source_name)
    if source_depth is None and isinstance(config.get("v_loss_layer"), int):
        source_depth = config["v_loss_layer"] + 1
    if "layers" in config and (overrides or {}).get("layers") is None and config["layers"]:
        if source_depth is None:
            new = [min(int(x), depth - 1) for x in config["layers"]]
        else:
            new = rescale_layers(config["layers"], source_depth, depth)
        if new != list(config["layers"]):
            notes.append(f"layers {config['layers']} of {source_name} ({source_depth} blocks) -> {new} "
                         f"({depth} blocks)")
        config["layers"] = new
    if "v_loss_layer" in config:
        config["v_loss_layer"] = depth - 1
    config.update(extra or {})
    return apply_overrides(config, overrides), notes


def build_easyedit_hparams(alg_name: str, config: dict):
    module, cls_name = EASYEDIT_HPARAMS_CLASSES[alg_name]
    cls = getattr(importlib.import_module(module), cls_name)
    import yaml

    fields = {f.name for f in dataclasses.fields(cls)}
    config = {k: v for k, v in config.items() if k in fields or k not in RUNNER_FIELDS}  # e.g. ROME: no batch_size

    # EasyEdit's classes read YAML only (from_hparams converts "5e-3"-style strings); a temporary file it is.
    fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix=f"easyedit-{alg_name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return cls.from_hparams(tmp)
    finally:
        os.remove(tmp)


class _EasyEditMixin:
    """What EasyEdit's BaseEditor does around apply: tokenizer padding side, logs, context templates."""

    alg_name: str
    log_path: Path | None = None

    def _padding_side(self) -> str:
        return "right" if self.alg_name in RIGHT_PADDING_ALGS else "left"

    def _prepare_easyedit(self, model, tok, out_dir: Path) -> dict:
        tok.padding_side = self._padding_side()
        self.log_path = Path(out_dir) / "easyedit.log"
        seed = 42
        if self.alg_name in ("ROME", "MEMIT"):
            # sampled once per process by EasyEdit: draw them under a fixed seed so a resumed run gets the same
            with self._quiet(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if self.alg_name == "ROME":
                    main = importlib.import_module("easyeditor.models.rome.rome_main")
                    templates = main.get_context_templates(model, tok, self.hparams.context_template_length_params)
                else:
                    main = importlib.import_module("easyeditor.models.memit.memit_main")
                    templates = main.get_context_templates(model, tok)
            return {"context_templates": templates, "context_templates_seed": seed}
        return {}

    @contextlib.contextmanager
    def _quiet(self):
        if self.log_path is None:
            yield
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
            yield


class EasyEditWeightsMethod(_EasyEditMixin, WeightsCopyMethod):
    """FT-L, FT-M, ROME, MEMIT: EasyEdit's apply functions (weights changed in place, weights_copy returned)."""

    def __init__(self, name, alg_name, hparams, hparams_source, apply_fn, batchable, stats_plan=None):
        super().__init__(name, hparams, hparams_source)
        self.alg_name = alg_name
        self.apply_fn = apply_fn
        self.batchable = batchable
        self.stats_plan = stats_plan
        self.stats_info: dict | None = None

    def fingerprint_extra(self) -> dict:
        return {"covariance_texts": self.stats_plan.describe()} if self.stats_plan else {}

    def prepare(self, model, tok, *, out_dir, progress=True) -> dict:
        info = {}
        if self.stats_plan is not None:
            self.stats_info = ensure_covariance_stats(model, tok, self.hparams, self.stats_plan, progress=progress)
            info["covariance_statistics"] = self.stats_info
        info.update(self._prepare_easyedit(model, tok, out_dir))
        return info

    def call_apply(self, model, tok, requests, kwargs):
        with self._quiet():
            return super().call_apply(model, tok, requests, kwargs)

    def summary_info(self) -> dict:
        return {"covariance_statistics": self.stats_info} if self.stats_info else {}


class EasyEditLoRAMethod(_EasyEditMixin, PeftMethod):
    """EasyEdit's LoRA (lora_type: lora). In sequential mode EasyEdit keeps training the same adapter."""

    def __init__(self, name, alg_name, hparams, hparams_source, apply_fn):
        super().__init__(name, hparams, hparams_source)
        self.alg_name = alg_name
        self._apply = apply_fn

    def apply_fn(self, *args, **kwargs):
        with self._quiet():
            return self._apply(*args, **kwargs)

    def prepare(self, model, tok, *, out_dir, progress=True) -> dict:
        return self._prepare_easyedit(model, tok, out_dir)


def build_easyedit_method(method_cfg: dict, *, model, model_path: str, device: str, batch_size: int,
                          easyedit_path: str | None, closest: str, stats_dir: str,
                          covariance: Callable[[], CovariancePlan]) -> EditMethod:
    """FT-L / FT-M / LoRA / ROME / MEMIT through EasyEdit (raises EasyEditUnavailable without it)."""
    import yaml

    alg_dict = import_easyedit(easyedit_path)
    alg_name = method_cfg["alg_name"]
    apply_fn = alg_dict.ALG_DICT[alg_name]
    src = easyedit_root() / "hparams" / method_cfg.get("easyedit_hparams", alg_name) / f"{closest}.yaml"
    if not src.is_file():
        raise FileNotFoundError(f"EasyEdit has no {src}; set model.easyedit_closest to a model of "
                                f"{src.parent} (e.g. llama-7b)")
    with open(src, encoding="utf-8") as f:
        base = yaml.safe_load(f) or {}
    overrides = dict(method_cfg.get("hparams") or {})
    extra, plan = {}, None
    if "stats_dir" in base:
        extra["stats_dir"] = str(Path(stats_dir).expanduser().resolve())
        mom2 = overrides.get("mom2_adjustment")
        needs_stats = alg_name == "MEMIT" or bool(base.get("mom2_adjustment") if mom2 is None else mom2)
        if needs_stats:
            plan = covariance()
            extra.update(mom2_dataset=plan.dataset_name, mom2_n_samples=plan.n_samples)
    config, notes = adapt_easyedit_config(base, source_name=closest, model_path=model_path, depth=model_depth(model),
                                          device=device, batch_size=batch_size, fixed=method_cfg.get("fixed"),
                                          overrides=overrides, extra=extra)
    hparams = build_easyedit_hparams(alg_name, config)
    source = f"{src} (adapted: model_name, device, layers, v_loss_layer, fp16, batch_size, stats)"
    name = method_cfg.get("name", alg_name)
    if alg_name == "LoRA":
        method = EasyEditLoRAMethod(name, alg_name, hparams, source, apply_fn)
    else:
        batch_mod = importlib.import_module("easyeditor.editors.batch_editor")
        batchable = bool(batch_mod.BatchEditor.is_batchable_method(alg_name))
        method = EasyEditWeightsMethod(name, alg_name, hparams, source, apply_fn, batchable, plan)
    method.notes += notes
    return method
