"""Fluency: EasyEdit's top-k generation (generate_fast) scored by the weighted 2/3-gram entropy."""

from __future__ import annotations

import inspect
import unicodedata

import torch

from .ngram import n_gram_entropy
from .teacher_forced import _as_list, _logits


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


def _cache_argument(model) -> str:
    """The KV-cache keyword of `model.forward`: `cache` from transformers 5.2x on (`past_key_values` is deprecated
    there and goes in 5.40), `past_key_values` before."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def generate_fast(model, tok, prompts, n_gen_per_prompt: int = 1, top_k: int = 5, max_out_len: int = 200,
                  generator: torch.Generator | None = None) -> list[str]:
    """EasyEdit's generate_fast: top-k sampling until the sequence (prompt included) has max_out_len
    tokens; returns the decoded texts, prompt included. No stop at eos. One unpadded prompt at a time and
    no attention mask, as EasyEdit does for models whose name contains "llama" (for other names it passes
    a mask of the uncached tokens only, which transformers 5 misreads and the text degenerates)."""
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    texts = []
    for prompt in [p for p in _as_list(prompts) for _ in range(n_gen_per_prompt)]:
        ids = tok(prompt, return_tensors="pt")["input_ids"].to(device)
        past = None
        step_input = ids
        with torch.no_grad():
            while ids.shape[1] < max_out_len:
                out = model(input_ids=step_input, use_cache=True, **{cache_arg: past})
                past = _cache_of(out)
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

