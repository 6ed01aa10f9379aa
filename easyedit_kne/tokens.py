"""Teacher-forced encoding of edit requests, shared by attribution, training and evaluation.

The text is `f"{prompt} {target_new}"` (EasyEdit's convention); the target tokens are the tokens of
that text after the tokens of `prompt` alone, which must be a prefix of them (checked per request, with an
error naming the request; an EOS that the tokenizer appends to every text is dropped). Prompts longer
than `max_length` allows are cut from the left (the beginning-of-sequence token, if the tokenizer adds
one, is kept) with a warning, so the same tokens are seen whichever step uses them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def check_request(request, index: int = 0) -> None:
    """Raise a clear error for a request EasyEdit would choke on later, before any weight is touched."""
    where = f"request {index}"
    if not isinstance(request, dict):
        raise TypeError(f"{where}: expected a dict with 'prompt' and 'target_new', got {type(request).__name__}")
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' is missing or empty; give the text that precedes the new answer")
    target = request.get("target_new")
    if isinstance(target, dict) and "str" in target:  # ROME-style {"str": ...}
        target = target["str"]
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"{where}: 'target_new' is missing or empty; give the new answer as a non-empty string")


def target_text(request) -> str:
    target = request["target_new"]
    return target["str"] if isinstance(target, dict) else target


def check_requests(requests) -> list:
    if isinstance(requests, dict):
        requests = [requests]
    if not isinstance(requests, (list, tuple)) or len(requests) == 0:
        raise ValueError("requests: give a non-empty list of edit requests (dicts with 'prompt' and 'target_new')")
    for i, r in enumerate(requests):
        check_request(r, i)
    return list(requests)


@dataclass
class EncodedText:
    ids: list  # token ids of prompt + target (after truncation)
    n_prompt: int  # how many of them belong to the prompt


def _drop_appended_eos(tok, prompt_ids: list, full_ids: list) -> tuple[list, list]:
    """A tokenizer whose post-processor appends EOS to every text would put it at the end of the prompt's
    tokens too; it is dropped from both (the target is the answer's tokens, not an end of text)."""
    eos = tok.eos_token_id
    if eos is not None and prompt_ids and full_ids and prompt_ids[-1] == eos and full_ids[-1] == eos:
        return prompt_ids[:-1], full_ids[:-1]
    return prompt_ids, full_ids


def check_boundary(tok, prompt: str, target: str, prompt_ids: list, full_ids: list, index: int) -> None:
    """The prompt's tokens must be a prefix of the tokens of `prompt + " " + target`, else the target tokens
    cannot be told apart (a SentencePiece piece spanning the boundary, a tokenizer that rewrites the text)."""
    n = len(prompt_ids)
    if full_ids[:n] == list(prompt_ids):
        return
    k = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
             min(n, len(full_ids)))
    alone = tok.convert_ids_to_tokens(list(prompt_ids[k:]))
    joined = tok.convert_ids_to_tokens(list(full_ids[k:k + len(alone) + 1]))
    fix = ("remove the trailing whitespace from the prompt (the text is prompt + ' ' + target_new)"
           if prompt != prompt.rstrip() else
           "end the prompt at a word boundary and start target_new with a new word, or use a tokenizer that "
           "does not merge across the space between them")
    raise ValueError(
        f"request {index}: the prompt's tokens are not a prefix of the tokens of prompt + ' ' + target_new "
        f"(prompt={prompt!r}, target_new={target!r}): from token {k} the prompt alone gives {alone}, the full "
        f"text gives {joined}, so the target tokens cannot be told apart; {fix}")


def encode_one(tok, prompt: str, target: str, max_length: int, index: int = 0, prefix_ids=()) -> EncodedText:
    """`prefix_ids` go before the prompt's tokens (kept when the prompt is cut, like BOS)."""
    prompt_ids = tok(prompt)["input_ids"]
    full_ids = tok(f"{prompt} {target}")["input_ids"]
    prompt_ids, full_ids = _drop_appended_eos(tok, prompt_ids, full_ids)
    check_boundary(tok, prompt, target, prompt_ids, full_ids, index)
    prefix = list(prefix_ids)
    prompt_ids, full_ids = prefix + list(prompt_ids), prefix + list(full_ids)
    n_prompt = len(prompt_ids)
    if len(full_ids) <= n_prompt:
        raise ValueError(
            f"request {index}: target_new={target!r} adds no tokens after the prompt; "
            "give a target that tokenizes to at least one token")
    n_target = len(full_ids) - n_prompt
    if len(full_ids) > max_length:
        bos = tok.bos_token_id
        keep_bos = bos is not None and full_ids[len(prefix)] == bos
        n_head = len(prefix) + int(keep_bos)
        room = max_length - n_target - n_head
        if room < 1:
            raise ValueError(
                f"request {index}: target_new has {n_target} tokens, which leaves no room for the prompt "
                f"within max_length={max_length}; raise max_length")
        warnings.warn(
            f"request {index}: {len(full_ids)} tokens exceed max_length={max_length}; "
            f"the prompt is cut from the left to {room} tokens", stacklevel=3)
        head = full_ids[:n_head]
        prompt_part = full_ids[n_head:n_prompt][-room:]
        full_ids = head + prompt_part + full_ids[n_prompt:]
        n_prompt = len(head) + len(prompt_part)
    return EncodedText(full_ids, n_prompt)


def check_encodable(tok, requests, max_length: int) -> None:
    """Raise now, naming the request, if one cannot be encoded (no target token, no room for the prompt).

    For steps that encode one request at a time later (attribution), so that a bad item fails before any
    work; truncation warnings are left to the encoding that uses the tokens.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, r in enumerate(requests):
            encode_one(tok, r["prompt"], target_text(r), max_length, i)


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T): the token at t where t is a target position, else IGNORE_INDEX
    lengths: list

    def to(self, device) -> EncodedBatch:
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                            self.labels.to(device), self.lengths)

    def target_positions(self, b: int) -> torch.Tensor:
        return (self.labels[b] != IGNORE_INDEX).nonzero().flatten()


def pad_id(tok) -> int:
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def encode_requests(tok, requests, max_length: int, first_index: int = 0, prefix_ids=()) -> EncodedBatch:
    """Right-padded batch of `prompt + ' ' + target_new`, labels on the target tokens only.

    `first_index` is the position of `requests[0]` in the caller's list (for error and warning messages).
    """
    encoded = [encode_one(tok, r["prompt"], target_text(r), max_length, first_index + i, prefix_ids)
               for i, r in enumerate(requests)]
    T = max(len(e.ids) for e in encoded)
    B = len(encoded)
    input_ids = torch.full((B, T), pad_id(tok), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(encoded):
        n = len(e.ids)
        ids = torch.tensor(e.ids, dtype=torch.long)
        input_ids[b, :n] = ids
        attention_mask[b, :n] = 1
        labels[b, e.n_prompt:n] = ids[e.n_prompt:]
    return EncodedBatch(input_ids, attention_mask, labels, [len(e.ids) for e in encoded])


def _gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log-softmax of `logits` (B, N, V) at `targets` (B, N); IGNORE_INDEX targets are zero in both outputs."""
    targets = targets.to(logits.device)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    gathered = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return gathered * mask, mask


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(y_t | y_<t) at every target position: the logits at t-1 predict the token at t.

    Returns (logprobs (B, T-1), mask (B, T-1)); positions that are not targets are zero in both.
    """
    return _gather_logprobs(logits[:, :-1], labels[:, 1:])


def prediction_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose logits predict a target token at t+1 in some row (the only ones the loss needs)."""
    return ((labels[:, 1:] != IGNORE_INDEX).any(0)).nonzero().flatten()


def logprobs_at(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `target_logprobs` for logits computed only at `positions` (B, len(positions), V)."""
    return _gather_logprobs(logits, labels[:, positions.to(labels.device) + 1])
