"""AdaLoRA (ours)
--------------
EasyEdit main's AdaLoRA path (`lora_type: adalora` in apply_lora_to_model) builds `AdaLoraConfig` without
`total_step`, which peft >= 0.14 rejects ("AdaLoRA does not work when `total_step` is None"). See
`apply_adalora_to_model` for the baseline used instead and how it differs from EasyEdit's code path."""

from __future__ import annotations

import dataclasses
import math
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .easyedit_methods import adapt_easyedit_config
from .method_base import PeftMethod, _is_peft


# ----------------------------------------------------------------------------------------- AdaLoRA
@dataclass
class AdaLoRAHyperParams:
    """The fields of EasyEdit's LoRAHyperParams plus AdaLoRA's schedule (peft's AdaLoraConfig names)."""

    model_name: Any = None
    alg_name: str = "AdaLoRA"
    device: Any = "cpu"
    layers: list = field(default_factory=list)
    num_steps: int = 70
    lr: float = 5e-3
    weight_decay: float = 0.0
    kl_factor: float = 0.0  # read by EasyEdit's LoRA YAMLs, unused there and here
    norm_constraint: Any = False  # idem
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = 8  # AdaLoRA's target_r
    init_r: int | None = None  # None: round(1.5 * rank), peft's default ratio (12 / 8)
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False
    lora_type: str = "adalora"

    def __post_init__(self):
        for name in ("num_steps", "rank", "tinit", "tfinal", "deltaT", "batch_size", "max_length"):
            setattr(self, name, int(float(getattr(self, name))))
        for name in ("lr", "weight_decay", "lora_alpha", "lora_dropout", "beta1", "beta2", "orth_reg_weight"):
            setattr(self, name, float(getattr(self, name)))
        if self.init_r is None:
            self.init_r = max(self.rank, round(1.5 * self.rank))
        self.init_r = int(self.init_r)
        self.layers = [int(x) for x in (self.layers or [])]
        self.target_modules = list(self.target_modules)

    @classmethod
    def from_config(cls, config: dict) -> AdaLoRAHyperParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"AdaLoRA: unknown hparams {unknown}; allowed: {sorted(known)}")
        return cls(**{**config, "alg_name": "AdaLoRA"})


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def lora_training_batch(tok, prompts: list[str], targets: list[str]):
    """EasyEdit's LoRA batch (lora_main.execute_lora, decoder-only branch), verbatim in behaviour.

    `prompt + ' ' + target`, padded with the tokenizer's side (left, as BaseEditor sets it); labels mask
    the pad tokens and the prompt tokens (counted as #pad + #non-pad tokens of the prompt alone).
    """
    full = [f"{p} {t}" for p, t in zip(prompts, targets, strict=True)]
    prompt_ids = tok(list(prompts), return_tensors="pt", padding=True, truncation=True)["input_ids"]
    num_prompt = [int((row != tok.pad_token_id).sum()) for row in prompt_ids]
    tokens = tok(full, return_tensors="pt", padding=True, truncation=True)
    labels = tokens["input_ids"].clone()
    num_pad = [int((row == tok.pad_token_id).sum()) for row in labels]
    for i in range(len(full)):
        labels[i][num_pad[i]:num_pad[i] + num_prompt[i]] = -100
    labels[tokens["input_ids"] == tok.pad_token_id] = -100
    tokens["labels"] = labels
    return tokens


def apply_adalora_to_model(model, tok, requests: list[dict], hparams: AdaLoRAHyperParams, copy: bool = False,
                           return_orig_weights: bool = False, keep_original_weight: bool = False, **kwargs):
    """AdaLoRA baseline: EasyEdit's LoRA objective on peft's AdaLoRA; returns (peft_model, {}).

    Same as EasyEdit's `execute_lora` (easyeditor/models/lora/lora_main.py) with lora_type "lora": a fresh
    adapter on `target_modules` (and `layers`, if given), Adam on the adapter parameters with `lr` and
    `weight_decay`, `num_steps` passes over the requests in chunks of `batch_size`, each chunk one step on
    the causal-LM loss of `prompt + ' ' + target_new` with the prompt and pad tokens masked (the mean NLL of
    the target tokens); no early stop; the model stays in eval mode (dropout inactive), as in EasyEdit.

    Differences from EasyEdit's AdaLoRA code path (`lora_type: adalora`), which cannot run with peft >= 0.14:
    * `AdaLoraConfig(total_step=num_steps × chunks)`, the number of optimizer steps (EasyEdit passes none
      and peft raises "AdaLoRA does not work when `total_step` is None");
    * `target_r = rank` and `init_r = init_r` (default 1.5 × rank): EasyEdit passes `r=rank`, which peft's
      AdaLoRA ignores (it used its defaults target_r 8, init_r 12); the schedule fields (tinit, tfinal,
      deltaT, beta1, beta2, orth_reg_weight) are peft's defaults unless set;
    * `update_and_allocate(step)` after every optimizer step (EasyEdit never calls it, so its AdaLoRA never
      reallocated ranks); the call at step = total_step − tfinal fixes the final budget;
    * the loss includes AdaLoRA's orthogonality regularizer (peft adds orth_reg_weight × ‖PᵀP − I‖ whenever
      the model computes a loss), as it would in EasyEdit's path;
    * no gradient checkpointing / input-grad hooks (EasyEdit enables them; they do nothing in eval mode);
    * a request's `prompt` containing "{}" is formatted with its subject, as in EasyEdit.
    Restore with `peft_model.unload()` (the base weights are untouched); `merge_and_unload()` keeps the edit.
    """
    from peft import AdaLoraConfig, TaskType, get_peft_model

    if _is_peft(model):
        raise ValueError("apply_adalora_to_model: the model already carries a PEFT adapter; merge or unload it")
    if copy:
        model = deepcopy(model)
    requests = deepcopy(requests)
    for r in requests:
        if "{}" in r["prompt"]:
            r["prompt"] = r["prompt"].format(r["subject"])
    prompts = [r["prompt"] for r in requests]
    targets = [r["target_new"] for r in requests]
    batch_size = max(1, int(hparams.batch_size))
    total_step = hparams.num_steps * math.ceil(len(requests) / batch_size)
    config = AdaLoraConfig(
        task_type=TaskType.CAUSAL_LM, inference_mode=False, init_r=hparams.init_r, target_r=hparams.rank,
        lora_alpha=hparams.lora_alpha, lora_dropout=hparams.lora_dropout,
        layers_to_transform=hparams.layers if hparams.layers else None, target_modules=hparams.target_modules,
        total_step=total_step, tinit=hparams.tinit, tfinal=hparams.tfinal, deltaT=hparams.deltaT,
        beta1=hparams.beta1, beta2=hparams.beta2, orth_reg_weight=hparams.orth_reg_weight)
    peft_model = get_peft_model(model, config)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(peft_model.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay)
    step = 0
    with torch.enable_grad():
        for _ in range(hparams.num_steps):
            for txt, tgt in zip(_chunks(prompts, batch_size), _chunks(targets, batch_size), strict=True):
                opt.zero_grad()
                tokens = lora_training_batch(tok, txt, tgt).to(device)
                loss = peft_model(**tokens).loss
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"AdaLoRA: the loss became {float(loss)} at step {step}; lower lr")
                loss.backward()
                opt.step()
                step += 1
                peft_model.base_model.update_and_allocate(step)
    opt.zero_grad(set_to_none=True)
    return peft_model, {}


class AdaLoRAMethod(PeftMethod):
    """Our AdaLoRA baseline. Sequential editing merges each edit before the next one (a fresh adapter per
    edit; EasyEdit's LoRA instead keeps training one adapter)."""

    merge_each_sequential_edit = True

    def __init__(self, name, hparams, hparams_source):
        super().__init__(name, hparams, hparams_source)
        self.apply_fn = apply_adalora_to_model

    def prepare(self, model, tok, *, out_dir, progress=True) -> dict:
        tok.padding_side = "left"  # what BaseEditor sets for LoRA-style methods; the batch assumes it
        return {}


def build_adalora_method(method_cfg: dict, *, model_path: str, depth: int, device: str, batch_size: int,
                         easyedit_path: str | None, closest: str | None) -> AdaLoRAMethod:
    """AdaLoRA hparams: EasyEdit's hparams/LoRA/<closest>.yaml when the checkout is found, else `base`."""
    import yaml

    source, config, notes = "easyedit_kne/bench/conf/method/AdaLoRA.yaml (base)", dict(method_cfg.get("base") or {}), []
    candidates = []
    if easyedit_path and closest:
        candidates.append(Path(easyedit_path).expanduser() / "hparams" / method_cfg.get("easyedit_hparams", "LoRA")
                          / f"{closest}.yaml")
    for path in candidates:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
            source = f"{path} (EasyEdit's LoRA values; lora_type adalora)"
            break
    config.pop("alg_name", None)
    config, notes = adapt_easyedit_config(config, source_name=closest or "", model_path=model_path, depth=depth,
                                          device=device, batch_size=batch_size, fixed={"lora_type": "adalora"},
                                          overrides=method_cfg.get("hparams"))
    hparams = AdaLoRAHyperParams.from_config(config)
    method = AdaLoRAMethod(method_cfg.get("name", "AdaLoRA"), hparams, source)
    method.notes += notes
    return method
