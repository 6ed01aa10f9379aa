"""EasyEdit's edit-quality metrics, reimplemented to give the same numbers, plus greedy exact match.

What EasyEdit does (easyeditor/evaluate/evaluate.py, evaluate_utils.py, util/generate.py and
editors/editor.py; teacher-forcing evaluation, decoder-only model, `evaluation_type` not "LLM-judge"):

* rewrite / rephrase / portability accuracy (`test_prediction_acc`, teacher forced): the text
  `prompt + ' ' + target` is tokenized with LEFT padding (the tokenizer's side is forced to left for the
  call); one batched forward pass over all prompts of a call; the prompt length of row i is
  (#pad tokens in the row of prompt+target) + (#non-pad tokens of the prompt tokenized alone); the
  argmax at positions [len-1, T-1) is compared with the tokens at [len, T) and the share of equal
  positions is the accuracy. One value per prompt, in a list; rows with no target token give NaN and are
  dropped when there is more than one prompt.
* locality (`compute_locality_quality` + `finalize_locality_metrics`): the same forward pass with the
  locality answer as target, but the argmax tokens themselves are kept (`{key}_output`), before the edit
  ("pre") and after it ("post"); `{key}_acc` of the post metrics is, per locality prompt, the share of
  positions where the post-edit argmax token equals the pre-edit one (not the ground truth).
* fluency (`test_generation_quality`): `generate_fast` samples (top-k = 5, from the global torch RNG) from
  the edit prompt until the sequence, prompt included, is 100 tokens long; the decoded text (prompt
  included, special tokens skipped, NFKD-normalised, "\\n\\n" -> " ") is scored by
  `n_gram_entropy`: for n = 2 and 3 the entropy in bits of the n-gram frequency distribution of
  `nltk.word_tokenize` tokens, weighted 2/3 and 4/3, averaged.
* KnowEdit summary (examples/run_knowedit_llama2.py `eval`): Edit Succ = mean of rewrite_acc[0];
  Portability / Locality = mean over cases of the mean over the case's keys of the key's mean;
  Fluency = mean ngram_entropy; all x 100.

Oddities found in EasyEdit, and what is done here:

* `max_length` does not truncate anything in EasyEdit's teacher-forced path: the tokenizer's max_length
  is max(hparams.max_length, longest prompt+target + 1). Here, so that attribution, training and
  evaluation see the same tokens, a prompt whose `prompt + ' ' + target` exceeds `max_length` is cut from
  the left exactly as `easyedit_kne.tokens.encode_one` cuts it, with a warning (`truncate=False` gives
  EasyEdit's behaviour). Texts within `max_length` -- all of ZsRE, counterfact and recent at the default
  40 -- are untouched, so the numbers equal EasyEdit's there.
* The prompt length counts pad-token ids; with pad == eos (EasyEdit sets `pad_token_id = eos_token_id`
  for llama-named models) an eos/pad id inside the text is counted as padding. Mirrored.
* The teacher-forced pass is batched with left padding and no position_ids, so padded rows see shifted
  absolute positions (harmless with RoPE up to rounding). Mirrored: one batched pass per call.
* `generate_fast` samples, so fluency is random; EasyEdit seeds the global RNG once at import
  (`seed_everything(42)`). Pass a `torch.Generator` for reproducible numbers. A prompt of 100 tokens or
  more gets no generated token at all: its "fluency" is that of the prompt (long WikiBio passages). EasyEdit
  runs prompts through one batch; here each prompt is generated on its own, which is identical for the
  single prompt compute_edit_quality passes.
* The KnowEdit example's `eval` averages every key of post["locality"]; current EasyEdit keeps the
  `{key}_output` token lists there next to `{key}_acc`, which that code cannot average. `summarize` uses
  the `_acc` keys only (what older EasyEdit left there).
* A locality/portability key with an empty prompt list makes EasyEdit fail (`max()` of an empty
  sequence); such keys are skipped here (`load_knowedit` never produces them).
* nltk.word_tokenize needs NLTK's Punkt data (a download); `word_tokenize` below is a plain-Python
  reimplementation: the Penn-Treebank rules of nltk's NLTKWordTokenizer applied to sentences split the
  way Punkt's English model splits ordinary prose (after . ? ! followed by space, not after common
  abbreviations, single-letter initials or an ellipsis). Punkt's learned abbreviation and orthographic
  statistics are not reproduced, so rare abbreviations can split differently.

Extra metric: greedy exact match (`exact_match=True`): greedy decoding of as many tokens as the target has
after the prompt, compared with EasyEdit's `exact_match_score` normalisation (lower case, no punctuation,
no articles, single spaces).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Any, Iterable

import numpy as np
import torch

from .tokens import encode_one, target_text

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


def test_prediction_acc(model, tok, prompts, targets, device=None, *, max_length: int = 40,
                        locality: bool = False, use_chat_template: bool = False, truncate: bool = True):
    """EasyEdit's teacher-forced `test_prediction_acc` (see the module docstring).

    Returns a list of per-prompt accuracies, or with locality=True a list (one per prompt) of the argmax
    token ids predicting the target tokens.
    """
    if isinstance(prompts, str):
        prompts, targets = [prompts], [targets]
    prompts, targets = list(prompts), list(targets)
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise ValueError("no prompts to evaluate (EasyEdit fails on an empty list too)")
    if truncate:
        prompts = fit_prompts(tok, prompts, targets, max_length)
    if not locality and use_chat_template:
        prompts = _apply_chat_template(tok, prompts)
    device = resolve_device(model, device)
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
    starts = [a + b for a, b in zip(n_pad, n_prompt, strict=True)]
    inputs = {k: v.to(device) for k, v in pt_tok.items()}
    with torch.no_grad():
        logits = _logits(model(**inputs))
    answers = torch.argmax(logits, dim=-1).detach().cpu().tolist()
    labels = pt_tok["input_ids"].tolist()
    # row[start-1:-1] are the predictions of the tokens row[start:]
    answers = [row[s - 1:-1] for row, s in zip(answers, starts, strict=True)]
    labels = [row[s:] for row, s in zip(labels, starts, strict=True)]
    if locality:
        return answers
    accs = []
    for ans, lab in zip(answers, labels, strict=True):
        acc = float(np.mean(np.equal(ans, lab))) if ans else float("nan")
        if math.isnan(acc) and len(prompts) > 1:
            continue  # EasyEdit drops NaN rows of a batch, but returns [nan] for a single prompt
        accs.append(acc)
    return accs


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


# ----------------------------------------------------------------------------------------- fluency
def _sample_top_k(logits: torch.Tensor, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    probs = torch.softmax(logits, dim=1)
    top = torch.topk(probs, top_k, dim=1).indices
    top_probs = torch.gather(probs, 1, top)
    top_probs = top_probs / top_probs.sum(1)[:, None]
    choice = torch.multinomial(top_probs, 1, generator=generator)
    return torch.gather(top, 1, choice)


def _clean_generated(text: str) -> str:
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")


def generate_fast(model, tok, prompts, n_gen_per_prompt: int = 1, top_k: int = 5, max_out_len: int = 200,
                  generator: torch.Generator | None = None) -> list[str]:
    """EasyEdit's generate_fast: top-k sampling until the sequence (prompt included) has max_out_len
    tokens; returns the decoded texts, prompt included. No stop at eos. One unpadded prompt at a time and
    no attention mask, as EasyEdit does for models whose name contains "llama" (for other names it passes
    a mask of the uncached tokens only, which transformers 5 misreads and the text degenerates)."""
    device = next(model.parameters()).device
    texts = []
    for prompt in [p for p in _as_list(prompts) for _ in range(n_gen_per_prompt)]:
        ids = tok(prompt, return_tensors="pt")["input_ids"].to(device)
        past = None
        step_input = ids
        with torch.no_grad():
            while ids.shape[1] < max_out_len:
                out = model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                new = _sample_top_k(_logits(out)[:, -1, :].float(), top_k, generator)
                ids = torch.cat([ids, new.to(ids.device)], dim=1)
                step_input = new
        texts.append(_clean_generated(tok.decode(ids[0].tolist(), skip_special_tokens=True)))
    return texts


def test_generation_quality(model, tok, prefixes, max_out_len: int = 100,
                            generator: torch.Generator | None = None) -> dict:
    texts = generate_fast(model, tok, prefixes, n_gen_per_prompt=1, max_out_len=max_out_len,
                          generator=generator)
    return {"ngram_entropy": n_gram_entropy(texts)}


test_generation_quality.__test__ = False


# ----------------------------------------------------------- word tokenizer (nltk.word_tokenize)
# Common English abbreviations (lower case, without the final period): after them a period ends a
# sentence only when a usual sentence opener follows (Punkt's abbreviation + orthographic heuristics).
_ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof sr jr st ft gen col lt maj adm sen rep reps inc ltd corp co cos bros vs
jan feb aug sep sept oct nov dec tues wed fri ave a.m p.m u.s u.k u.n u.s.a ph.d d.c n.y calif fla
""".split())
# Capitalised words that open sentences (after an abbreviation, an initial or an ellipsis they mark a
# sentence start; elsewhere Punkt learns this from its training corpus).
_SENTENCE_OPENERS = frozenset("""
the a an he she it i we they you this that these those there his her its their our my in on at for
but and however if when while after as although since so some many most both according even yet thus
which who whom whose how where why then now one not no all each every other such with from by to
of before during because""".split())
# Single letters that Punkt's English model treats as abbreviations; other initials end a sentence
# unless a word follows.
_ABBREVIATION_LETTERS = frozenset("cdefghklmnprstvw")
_OPENING_PUNCT = "([{\"'`\u00ab\u201c\u2018"
_CLOSING_PUNCT = ")]}\"'\u00bb\u201d\u2019"
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")


# --- Penn Treebank rules, in the order NLTKWordTokenizer applies them ---
_QUOTE_OPEN_CHARS = "\u00ab\u201c\u2018\u201e"
_QUOTE_CLOSE_CHARS = "\u00bb\u201d\u2019"
_STARTING = [
    (re.compile(f"([{_QUOTE_OPEN_CHARS}]|`+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
]
_PUNCT = [
    (re.compile(f"([^.])(\\.)([\\])}}>\"'{_QUOTE_CLOSE_CHARS} ]*)\\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\])}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"\*"), r" \g<0> "),
]
_BRACKETS = (re.compile(r"[\][(){}<>]"), r" \g<0> ")
_DASHES = (re.compile(r"--"), r" -- ")
_ENDING = [
    (re.compile(f"([{_QUOTE_CLOSE_CHARS}])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b")]


def treebank_tokenize(sentence: str) -> list[str]:
    """Word tokens of one sentence by the Penn-Treebank rules of nltk's NLTKWordTokenizer."""
    text = sentence
    for pattern, repl in _STARTING + _PUNCT:
        text = pattern.sub(repl, text)
    for pattern, repl in (_BRACKETS, _DASHES):
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _ENDING:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


_PUNKT_WORD = re.compile(r"[^)\";}\]*:@'({\[!?,]+")


def _opens_sentence(word: str) -> bool:
    """A capitalised usual opener ("The", "They'll"); Punkt's next token stops at punctuation."""
    m = _PUNKT_WORD.match(word)
    head = m.group(0).rstrip(".") if m else ""
    return head[:1].isupper() and head.lower() in _SENTENCE_OPENERS


def _ends_sentence(word: str, next_word: str) -> bool:
    """Punkt's decision for the whitespace-delimited `word` followed by `next_word` (approximated)."""
    core = word.rstrip(_CLOSING_PUNCT)
    if core.endswith(("?", "!")):
        return True
    if not core.endswith("."):
        return False
    bare = core.lstrip(_OPENING_PUNCT)
    kind = bare[:-1].lower()
    if (bare.endswith("..") or kind in _ABBREVIATIONS or kind.split("-")[-1] in _ABBREVIATIONS
            or kind in _ABBREVIATION_LETTERS):  # ellipsis or abbreviation
        return _opens_sentence(next_word)
    if len(kind) == 1 and kind.isalpha():  # another initial: a following word keeps the sentence
        return not next_word[:1].isalpha() or _opens_sentence(next_word)
    if _NUMBER.match(bare):  # a number or ordinal: a sentence goes on in lower case
        return not next_word[:1].islower()
    return True


def sent_tokenize(text: str) -> list[str]:
    """Sentences split the way Punkt's English model splits ordinary prose (see the module docstring)."""
    words = list(re.finditer(r"\S+", text))
    sentences, start = [], 0
    for cur, nxt in zip(words, words[1:], strict=False):
        if _ends_sentence(cur.group(0), nxt.group(0)):
            sentences.append(text[start:cur.end()].strip())
            start = nxt.start()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return [s for s in sentences if s]


def word_tokenize(text: str) -> list[str]:
    """Plain-Python stand-in for nltk.word_tokenize (English): sentence split, then Treebank rules."""
    return [tok for sent in sent_tokenize(text) for tok in treebank_tokenize(sent)]


def compute_freq(sentence: str, n: int = 2) -> Counter:
    tokens = word_tokenize(sentence)
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def compute_n_gram_entropy(sentence: str, ns=None, weights=None, agg: str = "arith") -> float:
    ns = [2, 3] if ns is None else ns
    weights = [2 / 3, 4 / 3] if weights is None else weights
    if agg not in ("arith", "geom"):
        raise ValueError(f"agg={agg!r}: choose 'arith' or 'geom'")
    entropies = []
    for n in ns:
        freqs = np.array(list(compute_freq(sentence, n).values()), dtype=np.float64)
        if freqs.size == 0:
            entropies.append(0.0)  # EasyEdit: an empty distribution sums to 0
            continue
        freqs = freqs / freqs.sum()
        entropies.append(np.sum(-freqs * np.log(freqs) / np.log(2)))
    weighted = np.array(entropies) * np.array(weights)
    if agg == "geom":
        return float(np.exp(np.mean(np.log(weighted))))
    return float(np.mean(weighted))


def n_gram_entropy(gen_texts: Iterable[str], agg: str = "arith") -> float:
    values = [compute_n_gram_entropy(t) for t in gen_texts]
    if agg == "geom":
        return float(np.exp(np.mean(np.log(values))))
    return float(np.mean(values))


# ------------------------------------------------------------------------------ whole edit quality
def compute_edit_quality(model, tok, request: dict, device=None, *, max_length: int = 40,
                         eval_metric: str = "token_em", test_generation: bool = False,
                         use_chat_template: bool = False, exact_match: bool = False,
                         fluency_max_len: int = 100, generator: torch.Generator | None = None) -> dict:
    """EasyEdit's compute_edit_quality for one request (teacher forcing, decoder-only model).

    Returns {"rewrite_acc": [...], "rephrase_acc": [...] (if the request has a rephrase_prompt),
    "locality": {f"{key}_output": [...]}, "portability": {f"{key}_acc": [...]},
    "fluency": {"ngram_entropy": ...} (test_generation), "metric_meta": {...},
    "exact_match": {"rewrite": [...], "rephrase": [...], "portability": {key: [...]}} (exact_match)}.
    Run it before and after the edit and call `finalize_locality_metrics({"pre": ..., "post": ...})`.
    """
    target_new = target_text(request)
    prompt = request["prompt"]
    rephrase = request.get("rephrase_prompt")
    kw = dict(max_length=max_length, use_chat_template=use_chat_template)
    ret = compute_rewrite_or_rephrase_quality(model, tok, prompt, target_new, device, eval_metric=eval_metric,
                                              **kw)
    ret["locality"] = {}
    ret["portability"] = {}
    if rephrase is not None:
        reph = compute_rewrite_or_rephrase_quality(model, tok, rephrase, target_new, device, test_rephrase=True,
                                                   eval_metric=eval_metric, **kw)
        ret["metric_meta"].update(reph.pop("metric_meta"))
        ret.update(reph)
    for key, item in (request.get("locality") or {}).items():
        if not _as_list(item["prompt"]):
            continue
        ret["locality"].update(compute_locality_quality(model, tok, key, item["prompt"], item["ground_truth"],
                                                        device, max_length=max_length))
    for key, item in (request.get("portability") or {}).items():
        if not _as_list(item["prompt"]):
            continue
        ret["portability"].update(compute_portability_quality(model, tok, key, item["prompt"],
                                                              item["ground_truth"], device, **kw))
    if test_generation:
        ret["fluency"] = test_generation_quality(model, tok, _as_list(prompt), max_out_len=fluency_max_len,
                                                 generator=generator)
    if exact_match:
        em: dict[str, Any] = {"rewrite": greedy_exact_match(model, tok, prompt, target_new, device)}
        if rephrase is not None:
            em["rephrase"] = greedy_exact_match(model, tok, rephrase, target_new, device)
        em["portability"] = {
            key: greedy_exact_match(model, tok, item["prompt"], item["ground_truth"], device)
            for key, item in (request.get("portability") or {}).items() if _as_list(item["prompt"])}
        ret["exact_match"] = em
    return ret


# ------------------------------------------------------------------------------------ summary
def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _section_case_mean(section: dict) -> tuple[float | None, dict]:
    """Mean over the `_acc` keys of the key's mean x 100 (EasyEdit's KnowEdit `eval`), plus per key."""
    per_key = {}
    for key, values in section.items():
        if not key.endswith("_acc"):
            continue
        values = _as_list(values) if not isinstance(values, (int, float)) else [values]
        if len(values) == 0:
            continue
        per_key[key[: -len("_acc")]] = sum(values) / len(values) * 100
    return (float(np.mean(list(per_key.values()))) if per_key else None), per_key


def summarize(all_metrics: list[dict], phase: str = "post") -> dict:
    """KnowEdit table numbers (x 100) from a list of {"pre": ..., "post": ...} case metrics.

    Edit_Succ: mean rewrite_acc[0]; Portability / Locality: mean over cases (that have any key) of the
    mean over keys of each key's mean; Fluency: mean ngram_entropy; Rephrase: mean rephrase_acc (not in
    KnowEdit's tables); *_by_key: the mean over cases of each key; Exact_Match*: the greedy exact-match
    extras. A number with no case to average is None.
    """
    cases = [m.get(phase, m) if isinstance(m, dict) else m for m in all_metrics]
    if not cases:
        raise ValueError("summarize: no case metrics given")
    rewrites = [_as_list(c["rewrite_acc"])[0] * 100 for c in cases if "rewrite_acc" in c]
    edit = float(np.mean(rewrites)) if rewrites else None
    rephrase = _mean([float(np.mean(c["rephrase_acc"])) * 100 for c in cases if c.get("rephrase_acc")])
    out: dict[str, Any] = {"num_cases": len(cases), "Edit_Succ": edit}
    for section, name in (("portability", "Portability"), ("locality", "Locality")):
        case_means, by_key = [], {}
        for c in cases:
            mean, per_key = _section_case_mean(c.get(section) or {})
            if mean is not None:
                case_means.append(mean)
            for k, v in per_key.items():
                by_key.setdefault(k, []).append(v)
        out[name] = float(np.mean(case_means)) if case_means else None
        out[f"{name}_by_key"] = {k: float(np.mean(v)) for k, v in by_key.items()}
    flu = [c["fluency"]["ngram_entropy"] * 100 for c in cases if c.get("fluency")]
    out["Fluency"] = float(np.mean(flu)) if flu else None
    out["Rephrase"] = rephrase
    ems = [c["exact_match"] for c in cases if c.get("exact_match")]
    if ems:
        out["Exact_Match"] = _mean([float(np.mean(e["rewrite"])) * 100 for e in ems if e.get("rewrite")])
        out["Exact_Match_Rephrase"] = _mean(
            [float(np.mean(e["rephrase"])) * 100 for e in ems if e.get("rephrase")])
        port = []
        for e in ems:
            vals = [float(np.mean(v)) * 100 for v in (e.get("portability") or {}).values() if v]
            if vals:
                port.append(float(np.mean(vals)))
        out["Exact_Match_Portability"] = float(np.mean(port)) if port else None
    return out


TABLE_COLUMNS = {"Edit Succ.": "Edit_Succ", "Portability": "Portability", "Locality": "Locality",
                 "Fluency": "Fluency", "Exact Match": "Exact_Match", "Rephrase": "Rephrase"}


def table_numbers(summary: dict) -> dict:
    """`summarize()`'s numbers under the column names of KnowEdit's tables ("Edit Succ.", ...)."""
    return {column: summary.get(key) for column, key in TABLE_COLUMNS.items()}
