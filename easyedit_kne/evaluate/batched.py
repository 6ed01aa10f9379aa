"""`compute_edit_quality` with the same values at a lower cost (what the benchmark runner uses).

* Every teacher-forced call of a request (rewrite, rephrase, each locality and portability key) is one
  EasyEdit "group", left-padded on its own and run without position_ids, so a padded row's tokens sit at
  shifted positions. Here all groups go through ONE forward pass (the weights are read once): each group
  is padded further on the left to the widest group, and explicit position_ids give every row the
  positions it has in its own group (extra pad columns are masked out). A bigger batch rounds differently
  (~1e-6 on the logits), so a group where some target position's argmax leads by less than TIE is run
  again on its own, exactly as EasyEdit runs it.
* Greedy exact match: a prompt whose group row has no padding was run exactly as `model.generate` runs it
  (same tokens, positions 0..n). Where the tokens of `prompt` are a prefix of the tokens of
  `prompt + ' ' + target`, the teacher-forced argmax at the target positions is greedy decoding for as
  long as it agrees with the target: the first k agreeing tokens and the first disagreeing argmax are
  greedy's first k + 1 tokens, and only the remaining ones (often none) are generated. A position is only
  trusted where the top logit leads the runner-up by MARGIN (cached decoding rounds differently from a full
  pass), no eos is involved, and the model's generation config adds no logits processor; otherwise the
  prompt is generated as before.
* Fluency is sampled exactly as before (same generator, same text).
"""

from __future__ import annotations

from typing import Any

import torch

from ..tokens import target_text
from .fluency import test_generation_quality
from .teacher_forced import (
    _as_list,
    _logits,
    _metric_meta_lm,
    encode_group,
    exact_match_score,
    greedy_exact_match,
    resolve_device,
    score_group,
)

TIE = 1e-3  # a group with a target position whose argmax leads by less is rerun alone (batching rounds)
MARGIN = 1e-2  # logit lead of the argmax over the runner-up needed to trust it as the greedy token
_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
            "min_length": (None, 0), "min_new_tokens": (None, 0), "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
            "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0)}


def _plain_greedy(model) -> bool:
    """Whether model.generate(do_sample=False) is plain argmax decoding (no logits processor)."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None or not hasattr(model, "generate"):
        return False
    return all(getattr(cfg, k, None) in ok for k, ok in _NEUTRAL.items())


def _eos_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id, tok.pad_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list | tuple) else {eos}
    return {int(i) for i in ids if i is not None}


def run_groups(model, groups: list[dict], device, positions: bool = True):
    """One forward pass over the rows of every group; per group its [rows, T_g] argmax and top-2 margin,
    each row at the positions (and with the attention mask) it has when its group runs alone."""
    width = max(g["input_ids"].shape[1] for g in groups)
    ids, mask, pos = [], [], []
    for g in groups:
        rows, t = g["input_ids"].shape
        extra = width - t
        ids.append(torch.nn.functional.pad(g["input_ids"], (extra, 0), value=int(g["input_ids"][0, 0])))
        mask.append(torch.nn.functional.pad(g["attention_mask"], (extra, 0), value=0))
        pos.append((torch.arange(width) - extra).clamp(min=0).expand(rows, width))
    extra_kw = {"position_ids": torch.cat(pos).to(device)} if positions else {}  # alone: EasyEdit's call
    with torch.no_grad():
        logits = _logits(model(input_ids=torch.cat(ids).to(device), attention_mask=torch.cat(mask).to(device),
                               **extra_kw))
    top = torch.topk(logits.float(), 2, dim=-1)
    argmax, margin = top.indices[..., 0].cpu(), (top.values[..., 0] - top.values[..., 1]).cpu()
    out_a, out_m, row = [], [], 0
    for g in groups:
        rows, t = g["input_ids"].shape
        out_a.append(argmax[row:row + rows, width - t:])
        out_m.append(margin[row:row + rows, width - t:])
        row += rows
    return out_a, out_m


def _known_greedy(tok, group, i, argmax, margin, target, stop_ids) -> tuple[list[int], int] | None:
    """(greedy's first tokens after row i's prompt, how many tokens greedy decodes in all), or None where
    the teacher-forced row cannot stand for the generation."""
    prompt = group["prompts"][i]
    if group["n_pad"][i] != 0 or prompt != group["raw_prompts"][i]:
        return None  # a padded row sits at shifted positions; a cut prompt is not what generate sees
    ids = group["input_ids"][i].tolist()
    p_ids = tok(prompt)["input_ids"]
    n_new = max(1, len(tok.encode(prompt + " " + target)) - len(tok.encode(prompt)))
    n = len(p_ids)
    if ids[:n] != p_ids or len(ids) - n != n_new:
        return None
    known = []
    for j in range(n_new):
        tok_j, lead = int(argmax[i, n - 1 + j]), float(margin[i, n - 1 + j])
        if lead < MARGIN or tok_j in stop_ids:
            return None
        known.append(tok_j)
        if tok_j != ids[n + j]:
            break
    return known, n_new


def _exact_match(model, tok, group, argmax, margin, targets, device, usable, stop_ids) -> list[float]:
    out = []
    for i, (prompt, target) in enumerate(zip(group["raw_prompts"], targets, strict=True)):
        plan = _known_greedy(tok, group, i, argmax, margin, target, stop_ids) if usable else None
        if plan is None:
            out += greedy_exact_match(model, tok, prompt, target, device)
            continue
        known, n_new = plan
        if len(known) < n_new:
            head = torch.tensor([tok(prompt)["input_ids"] + known], device=device)
            with torch.no_grad():
                gen = model.generate(input_ids=head, attention_mask=torch.ones_like(head),
                                     max_new_tokens=n_new - len(known), do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            known = known + gen[0][head.shape[1]:].tolist()
        out.append(float(exact_match_score(tok.decode(known, skip_special_tokens=True), target)))
    return out


def fast_edit_quality(model, tok, request: dict, device=None, *, max_length: int = 40,
                      eval_metric: str = "token_em", test_generation: bool = False,
                      use_chat_template: bool = False, exact_match: bool = False, fluency_max_len: int = 100,
                      generator: torch.Generator | None = None) -> dict:
    """`compute_edit_quality`'s result (same keys, same values), batched as the module docstring says."""
    if eval_metric == "ppl" or eval_metric == "ood_ppl":
        from .edit_quality import compute_edit_quality

        return compute_edit_quality(model, tok, request, device, max_length=max_length, eval_metric=eval_metric,
                                    test_generation=test_generation, use_chat_template=use_chat_template,
                                    exact_match=exact_match, fluency_max_len=fluency_max_len,
                                    generator=generator)
    device = resolve_device(model, device)
    target_new = target_text(request)
    kw = dict(max_length=max_length, use_chat_template=use_chat_template)
    sections: list[tuple[str, str | None, list[str], dict]] = []  # (section, key, targets, group)
    for section, prompt in (("rewrite", request["prompt"]), ("rephrase", request.get("rephrase_prompt"))):
        if prompt is not None:
            sections.append((section, None, [target_new], encode_group(tok, prompt, target_new, **kw)))
    for section in ("locality", "portability"):
        for key, item in (request.get(section) or {}).items():
            if not _as_list(item["prompt"]):
                continue
            targets = _as_list(item["ground_truth"])
            sections.append((section, key, targets, encode_group(
                tok, item["prompt"], item["ground_truth"], max_length=max_length, locality=section == "locality",
                use_chat_template=use_chat_template and section != "locality")))
    argmax, margin = run_groups(model, [s[3] for s in sections], device)
    for j, (_, _, _, group) in enumerate(sections):
        if min(float(margin[j][i, s - 1:].min()) if s < margin[j].shape[1] else float("inf")
               for i, s in enumerate(group["starts"])) < TIE:
            (argmax[j],), (margin[j],) = run_groups(model, [group], device, positions=False)
    ret: dict[str, Any] = {"metric_meta": {}}
    ret["locality"], ret["portability"] = {}, {}
    for (section, key, _, group), am in zip(sections, argmax, strict=True):
        values = score_group(group, am)
        if section in ("rewrite", "rephrase"):
            ret[f"{section}_acc"] = values
            ret["metric_meta"][section] = _metric_meta_lm(section, eval_metric)
        elif section == "locality":
            ret["locality"][f"{key}_output"] = values
        else:
            ret["portability"][f"{key}_acc"] = values
    if test_generation:
        ret["fluency"] = test_generation_quality(model, tok, _as_list(request["prompt"]),
                                                 max_out_len=fluency_max_len, generator=generator)
    if exact_match:
        usable = _plain_greedy(model) and not use_chat_template
        stop = _eos_ids(model, tok)
        em: dict[str, Any] = {"portability": {}}
        for (section, key, targets, group), am, mg in zip(sections, argmax, margin, strict=True):
            if section == "locality":
                continue
            values = _exact_match(model, tok, group, am, mg, targets, device, usable, stop)
            if section == "portability":
                em["portability"][key] = values
            else:
                em[section] = values
        ret["exact_match"] = {k: em[k] for k in ("rewrite", "rephrase", "portability") if k in em}
    return ret
