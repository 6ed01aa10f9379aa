"""EasyEdit's teacher-forced metrics: rewrite / rephrase / portability accuracy, locality, greedy exact match
(see the package docstring of easyedit_kne.evaluate for what is mirrored and why)."""

from __future__ import annotations

import math
import re
import string

import numpy as np
import torch

from ..tokens import encode_one

PORTABILITY_KNOWEDIT = ("Subject_Aliasing", "reasoning", "Logical_Generalization")


# --------------------------------------------------------------------------------------------- utils
def resolve_device(model, device=None) -> torch.device:
    """EasyEdit's normalize_device, except that None (or a CUDA index without CUDA) means the model's device."""
    if isinstance(device, torch.device):
        return device
    model_device = next(model.parameters()).device
    if device is None or str(device).strip() == "":
        return model_device
    if isinstance(device, int) or str(device).strip().isdigit():
        return torch.device(f"cuda:{int(device)}") if torch.cuda.is_available() else model_device
    return torch.device(str(device).strip())


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


def _logits(outputs) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs.logits


def _metric_meta_lm(section: str, eval_metric: str) -> dict:
    if eval_metric == "ppl":
        return {"result_key": f"{section}_ppl", "protocol": "teacher_forcing_ppl", "scorer": "perplexity",
                "comparable_group": "lm.teacher_forcing.perplexity"}
    return {"result_key": f"{section}_acc", "protocol": "decoder_only_teacher_forcing",
            "scorer": "token_accuracy", "comparable_group": "lm.decoder_only_teacher_forcing.token_accuracy"}


def _metric_meta_locality(key: str) -> dict:
    return {"result_key": f"locality.{key}_acc", "protocol": "pre_post_argmax_token_match",
            "scorer": "token_match", "comparable_group": "locality.lm.pre_post_argmax_token_match"}


def _apply_chat_template(tok, prompts: list[str]) -> list[str]:
    convs = [[{"role": "user", "content": p}] for p in prompts]
    return tok.apply_chat_template(convs, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------------------- teacher-forced accuracy
def fit_prompts(tok, prompts, targets, max_length: int) -> list[str]:
    """Prompts whose text with the target exceeds `max_length` tokens, cut from the left like training."""
    out = []
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        if len(tok(f"{prompt} {target}")["input_ids"]) <= max_length:
            out.append(prompt)
            continue
        enc = encode_one(tok, prompt, target, max_length, i)  # warns; raises if the target leaves no room
        out.append(tok.decode(enc.ids[:enc.n_prompt], skip_special_tokens=True))
    return out


def encode_group(tok, prompts, targets, *, max_length: int = 40, locality: bool = False,
                 use_chat_template: bool = False, truncate: bool = True) -> dict:
    """The tokens of one `test_prediction_acc` call, exactly as EasyEdit builds them: the left-padded batch of
    `prompt + ' ' + target` ("input_ids", "attention_mask") and each row's first target position ("starts");
    "prompts" are the prompts as evaluated (cut to max_length, chat template applied)."""
    if isinstance(prompts, str):
        prompts, targets = [prompts], [targets]
    prompts, targets = list(prompts), list(targets)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise ValueError("no prompts to evaluate (EasyEdit fails on an empty list too)")
    raw = prompts
    if truncate:
        prompts = fit_prompts(tok, prompts, targets, max_length)
    if not locality and use_chat_template:
        prompts = _apply_chat_template(tok, prompts)
    prompt_target = [p + " " + t for p, t in zip(prompts, targets, strict=True)]
    limit = max(int(max_length), max(len(tok.encode(x)) for x in prompt_target) + 1)
    before = tok.padding_side
    tok.padding_side = "left"
    try:
        pt_tok = tok(prompt_target, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        p_tok = tok(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    finally:
        tok.padding_side = before
    pad = tok.pad_token_id
    n_prompt = [int((row != pad).sum()) for row in p_tok["input_ids"]]
    n_pad = [int((row == pad).sum()) for row in pt_tok["input_ids"]]
    return {"input_ids": pt_tok["input_ids"], "attention_mask": pt_tok["attention_mask"], "prompts": prompts,
            "raw_prompts": raw, "starts": [a + b for a, b in zip(n_pad, n_prompt, strict=True)], "n_pad": n_pad,
            "locality": locality}


def score_group(group: dict, argmax) -> list:
    """`test_prediction_acc`'s result from the group's argmax tokens (a [rows, T] tensor or nested list)."""
    answers = argmax.tolist() if isinstance(argmax, torch.Tensor) else argmax
    labels = group["input_ids"].tolist()
    starts = group["starts"]
    # row[start-1:-1] are the predictions of the tokens row[start:]
    answers = [row[s - 1:-1] for row, s in zip(answers, starts, strict=True)]
    labels = [row[s:] for row, s in zip(labels, starts, strict=True)]
    if group["locality"]:
        return answers
    accs = []
    for ans, lab in zip(answers, labels, strict=True):
        acc = float(np.mean(np.equal(ans, lab))) if ans else float("nan")
        if math.isnan(acc) and len(starts) > 1:
            continue  # EasyEdit drops NaN rows of a batch, but returns [nan] for a single prompt
        accs.append(acc)
    return accs


def test_prediction_acc(model, tok, prompts, targets, device=None, *, max_length: int = 40,
                        locality: bool = False, use_chat_template: bool = False, truncate: bool = True):
    """EasyEdit's teacher-forced `test_prediction_acc` (see the module docstring): one batched forward pass
    of the group `encode_group` builds (no position_ids, as EasyEdit).

    Returns a list of per-prompt accuracies, or with locality=True a list (one per prompt) of the argmax
    token ids predicting the target tokens.
    """
    group = encode_group(tok, prompts, targets, max_length=max_length, locality=locality,
                         use_chat_template=use_chat_template, truncate=truncate)
    device = resolve_device(model, device)
    with torch.no_grad():
        logits = _logits(model(input_ids=group["input_ids"].to(device),
                               attention_mask=group["attention_mask"].to(device)))
    return score_group(group, torch.argmax(logits, dim=-1).detach().cpu())


test_prediction_acc.__test__ = False  # EasyEdit's name; keeps pytest from collecting it when imported


def perplexity(model, tok, prompts, targets, device=None) -> float:
    """EasyEdit's `PPL` (eval_metric='ppl'): exp of the mean NLL of the target tokens.

    Mirrors EasyEdit: the prompt positions are masked by count from the left of each padded row, which is
    only right for unpadded rows (a single prompt, or right padding).
    """
    if isinstance(prompts, str):
        prompts, targets = [prompts], [targets]
    device = resolve_device(model, device)
    full = [f"{p} {t}" for p, t in zip(prompts, targets, strict=True)]
    prompt_ids = tok(list(prompts), return_tensors="pt", padding=True, truncation=True)["input_ids"]
    n_prompt = [int((row != tok.pad_token_id).sum()) for row in prompt_ids]
    enc = tok(full, return_tensors="pt", padding=True, truncation=True)
    labels = enc["input_ids"].clone()
    for i, n in enumerate(n_prompt):
        labels[i][:n] = -100
    labels[enc["input_ids"] == tok.pad_token_id] = -100
    input_ids, labels = enc["input_ids"][:, :1024].to(device), labels[:, :1024].to(device)
    with torch.no_grad():
        logits = _logits(model(input_ids=input_ids)).float()
    # the causal-LM loss transformers computes from `labels`: mean NLL of the non-ignored next tokens
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                            labels[:, 1:].reshape(-1), ignore_index=-100)
    return float(torch.exp(nll).cpu())


# ---------------------------------------------------------------------------- quality per section
def compute_rewrite_or_rephrase_quality(model, tok, prompt, target_new, device=None, *,
                                        test_rephrase: bool = False, eval_metric: str = "token_em",
                                        max_length: int = 40, use_chat_template: bool = False) -> dict:
    key = "rephrase" if test_rephrase else "rewrite"
    if eval_metric == "ppl":
        ret = {f"{key}_ppl": perplexity(model, tok, prompt, target_new, device)}
    elif eval_metric == "ood_ppl":
        raise NotImplementedError("eval_metric='ood_ppl' is not implemented here")
    else:  # EasyEdit: any other value ('token_em', 'exact match', ...) is teacher forcing
        ret = {f"{key}_acc": test_prediction_acc(model, tok, prompt, target_new, device, max_length=max_length,
                                                 use_chat_template=use_chat_template)}
    ret["metric_meta"] = {key: _metric_meta_lm(key, eval_metric)}
    return ret


def compute_locality_quality(model, tok, locality_key: str, prompt, locality_ground_truth, device=None, *,
                             max_length: int = 40) -> dict:
    """{f"{key}_output": argmax tokens per prompt}; compare pre vs post with `locality_accuracy`."""
    tokens = test_prediction_acc(model, tok, prompt, locality_ground_truth, device, max_length=max_length,
                                 locality=True)
    return {f"{locality_key}_output": tokens}


def compute_portability_quality(model, tok, portability_key: str, prompt, ground_truth, device=None, *,
                                max_length: int = 40, use_chat_template: bool = False) -> dict:
    acc = test_prediction_acc(model, tok, prompt, ground_truth, device, max_length=max_length,
                              use_chat_template=use_chat_template)
    return {f"{portability_key}_acc": acc}


def locality_accuracy(pre_outputs, post_outputs) -> list[float]:
    """Per locality prompt: share of target positions whose post-edit argmax equals the pre-edit one."""
    pre_outputs, post_outputs = list(pre_outputs), list(post_outputs)
    if len(pre_outputs) != len(post_outputs):
        raise ValueError(f"{len(pre_outputs)} pre-edit outputs but {len(post_outputs)} post-edit outputs")
    out = []
    for pre, post in zip(pre_outputs, post_outputs, strict=True):
        if len(pre) != len(post):
            raise ValueError(f"pre/post token lists differ in length ({len(pre)} vs {len(post)})")
        out.append(float(np.mean(np.equal(pre, post))) if len(pre) else float("nan"))
    return out


def finalize_locality_metrics(case: dict, request: dict | None = None) -> dict:
    """EasyEdit's finalize_locality_metrics: add post["locality"][f"{key}_acc"] from pre/post outputs."""
    keys = list((request or {}).get("locality", {}) or [])
    if request is None:
        keys = [k[: -len("_output")] for k in case["post"].get("locality", {}) if k.endswith("_output")]
    for key in keys:
        pre = case["pre"]["locality"].get(f"{key}_output")
        post = case["post"]["locality"].get(f"{key}_output")
        if pre is None or post is None:
            continue  # a key skipped for having no prompts
        case["post"]["locality"][f"{key}_acc"] = locality_accuracy(pre, post)
        case["post"].setdefault("metric_meta", {})[f"locality.{key}"] = _metric_meta_locality(key)
    return case


# ------------------------------------------------------------------------------ greedy exact match
def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation used by EasyEdit's exact_match_score."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def greedy_exact_match(model, tok, prompts, targets, device=None) -> list[float]:
    """1.0 where greedy decoding of len(target tokens) tokens after the prompt matches the target."""
    prompts, targets = _as_list(prompts), _as_list(targets)
    device = resolve_device(model, device)
    out = []
    for prompt, target in zip(prompts, targets, strict=True):
        enc = tok(prompt, return_tensors="pt")
        n_prompt = enc["input_ids"].shape[1]
        n_new = max(1, len(tok.encode(prompt + " " + target)) - len(tok.encode(prompt)))
        with torch.no_grad():
            gen = model.generate(input_ids=enc["input_ids"].to(device),
                                 attention_mask=enc["attention_mask"].to(device), max_new_tokens=n_new,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(gen[0][n_prompt:], skip_special_tokens=True)
        out.append(float(exact_match_score(text, target)))
    return out

