"""Edit methods of the KnowEdit runner (scripts/run_knowedit.py): one interface, EasyEdit's baselines, AdaLoRA.

The interface
-------------
An `EditMethod` holds one method's hparams and edits a model in place:

    info = method.prepare(model, tok, out_dir=..., progress=True)   # once per run (e.g. statistics)
    result = method.edit(model, tok, requests)                       # EditResult(model, restore, info)
    ... evaluate result.model ...
    model = result.restore()                                         # the unedited model again

`edit(..., sequential=True)` keeps the edit (no restore); `finish_sequential(model)` then turns whatever the
edits left (a PEFT wrapper) into a plain model, and `touched_parameters()` names the parameters any edit
changed (what the runner checkpoints). Methods whose apply function follows EasyEdit's contract
(`(edited_model, weights_copy)`, weights changed in place) are restored from `weights_copy`, bit for bit;
LoRA-style methods are restored with PEFT's `unload()` (the base layers were never written)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..model_flags import kept_flags


@dataclass
class EditResult:
    model: Any  # the model to evaluate (a PEFT wrapper for LoRA-style methods)
    restore: Callable[[], Any] | None  # undoes the edit and returns the plain model (None: not undoable)
    info: dict = field(default_factory=dict)  # seconds, localize_seconds, steps, ...


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def hparams_as_dict(hparams) -> dict:
    if dataclasses.is_dataclass(hparams):
        return _jsonable({f.name: getattr(hparams, f.name) for f in dataclasses.fields(hparams)})
    return _jsonable(dict(vars(hparams)))


def hparams_defaults(hparams) -> dict:
    """{field: its default} of a dataclass hparams (JSON form); {} for any other kind (EasyEdit's)."""
    if not dataclasses.is_dataclass(hparams):
        return {}
    out = {}
    for f in dataclasses.fields(hparams):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return _jsonable(out)


def apply_overrides(config: dict, overrides: dict | None) -> dict:
    """config updated with the non-null values of `overrides` (Hydra's `method.hparams`)."""
    out = dict(config)
    for key, value in (overrides or {}).items():
        if value is not None:
            out[key] = value
    return out


class EditMethod:
    """One edit method of the benchmark (see the module docstring)."""

    batchable = True  # may edit several requests in one call

    def __init__(self, name: str, hparams, hparams_source: str):
        self.name = name
        self.hparams = hparams
        self.hparams_source = hparams_source
        self.notes: list[str] = []
        self._touched: set[str] = set()

    @property
    def max_length(self) -> int:
        return int(getattr(self.hparams, "max_length", None) or 40)

    def hparams_dict(self) -> dict:
        return hparams_as_dict(self.hparams)

    def hparams_defaults(self) -> dict:
        """Defaults of the hparams fields: a field added after a run was written, at its default, does not
        change that run's numbers (the resume check accepts it)."""
        return hparams_defaults(self.hparams)

    def fingerprint_extra(self) -> dict:
        """Result-relevant settings beyond the hparams (part of the runner's resume check)."""
        return {}

    def prepare(self, model, tok, *, out_dir: Path, progress: bool = True) -> dict:
        return {}

    def edit(self, model, tok, requests: list[dict], *, sequential: bool = False) -> EditResult:
        raise NotImplementedError

    def finish_sequential(self, model):
        return model

    def touched_parameters(self) -> set[str]:
        return set(self._touched)

    def summary_info(self) -> dict:
        return {}


class WeightsCopyMethod(EditMethod):
    """A method with EasyEdit's contract: edits in place and returns {parameter name: original tensor}."""

    apply_fn: Callable

    def apply_kwargs(self) -> dict:
        return {}

    def edit_info(self, kwargs: dict) -> dict:
        return {}

    def call_apply(self, model, tok, requests, kwargs):
        return self.apply_fn(model, tok, requests, self.hparams, copy=False, return_orig_weights=True,
                             keep_original_weight=False, **kwargs)

    def edit(self, model, tok, requests, *, sequential: bool = False) -> EditResult:
        kwargs = self.apply_kwargs()
        start = time.perf_counter()
        with kept_flags(model):  # FT leaves its weights trainable
            edited, weights_copy = self.call_apply(model, tok, requests, kwargs)
        seconds = time.perf_counter() - start
        if edited is not model:
            raise RuntimeError(f"{self.name}: the apply function returned another model object; the runner needs "
                               "in-place edits (copy=False)")
        weights_copy = dict(weights_copy or {})
        self._touched.update(weights_copy)
        info = {"seconds": seconds, **self.edit_info(kwargs)}
        if sequential:
            return EditResult(model, None, info)

        def restore():
            with torch.no_grad():
                for name, value in weights_copy.items():
                    param = model.get_parameter(name)
                    param.copy_(value.to(param.device, param.dtype))
            return model

        return EditResult(model, restore, info)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def _adapted_weight_names(peft_model) -> set[str]:
    inner = peft_model.base_model.model
    return {f"{name}.weight" for name, module in inner.named_modules() if hasattr(module, "base_layer")}


def _clean_after_peft(plain, use_cache) -> None:
    """Undo what EasyEdit's execute_lora / get_peft_model leave on the base model besides the adapters."""
    if "peft_config" in vars(plain):
        del plain.peft_config
    flag = "is_activation_checkpointing" if hasattr(type(plain), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"  # transformers >= 5.x renamed it
    if getattr(plain, flag, False):
        plain.gradient_checkpointing_disable()
    if getattr(plain, "_require_grads_hook", None) is not None:
        plain.disable_input_require_grads()
    if use_cache is not None:
        plain.config.use_cache = use_cache


class PeftMethod(EditMethod):
    """A LoRA-style method: apply returns a PEFT model wrapping the (in place adapted) base model."""

    apply_fn: Callable
    merge_each_sequential_edit = False  # True: merge after every sequential edit (fresh adapter each time)

    def edit(self, model, tok, requests, *, sequential: bool = False) -> EditResult:
        base = model.base_model.model if _is_peft(model) else model
        use_cache = getattr(base.config, "use_cache", None)
        flags = {n: p.requires_grad for n, p in base.named_parameters()}
        start = time.perf_counter()
        edited, _ = self.apply_fn(model, tok, requests, self.hparams, copy=False, return_orig_weights=True,
                                  keep_original_weight=False)
        info = {"seconds": time.perf_counter() - start}

        def plain(unloaded):
            _clean_after_peft(unloaded, use_cache)
            for n, p in unloaded.named_parameters():
                if n in flags:
                    p.requires_grad_(flags[n])
            return unloaded

        if sequential:
            if self.merge_each_sequential_edit:
                self._touched.update(_adapted_weight_names(edited))
                return EditResult(plain(edited.merge_and_unload()), None, info)
            return EditResult(edited, None, info)
        return EditResult(edited, lambda: plain(edited.unload()), info)

    def finish_sequential(self, model):
        if not _is_peft(model):
            return model
        self._touched.update(_adapted_weight_names(model))
        merged = model.merge_and_unload()
        _clean_after_peft(merged, True)
        return merged


# ------------------------------------------------------------------------------------------ EasyEdit
