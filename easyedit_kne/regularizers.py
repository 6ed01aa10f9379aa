"""Subject-specificity terms added to KNE's edit loss (all off by default).

* `kl_prompt_weight` (FiNE's term): KL(p_pre ‖ p_post) of the next-token distributions at the positions
  inside the edit prompt (each position t that predicts a prompt token t+1), averaged over positions.
  The last prompt position, which predicts the new answer, is not constrained.
* `kl_subject_weight`: the same prompt with its subject (request["subject"]) swapped for
  `kl_subject_count` other entities from the package's own list (easyedit_kne/data/entities.txt, not
  taken from any evaluation data); KL(p_pre ‖ p_post) of the next-token distribution after each swapped
  prompt, averaged. This asks the update to fire for this subject only: (s', r) keeps its answer.

* `kl_essence_weight`: KL(p_pre ‖ p_post) of the next-token distribution after short prompts about the
  subject alone (ESSENCE_TEMPLATES: "{subject} is a", ...; ROME's "essence" idea), averaged. It asks the
  edit to leave what the model says about the subject alone as it was. Measured on FiNE's dev study
  (docs/fine.md), it raised counterfact's Relation_Specificity locality (79.0 -> 94.8), not its Forgetfulness.
  It needs request["subject"] (not necessarily in the prompt).

All references p_pre are computed once before training, with the model unedited. The entities chosen
for a request depend only on the subject and the seed (a stable hash), so runs are reproducible.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from .tokens import IGNORE_INDEX, pad_id


@lru_cache(maxsize=1)
def entities() -> tuple[str, ...]:
    text = resources.files("easyedit_kne").joinpath("data/entities.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def swap_entities(subject: str, count: int, seed: int) -> list[str]:
    """`count` entities other than `subject`, chosen by a stable hash of (subject, seed)."""
    pool = [e for e in entities() if e.lower() != subject.strip().lower()]
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(pool, min(count, len(pool)))


def swapped_prompts(requests, count: int, seed: int) -> list[str]:
    """The edit prompts with their subject replaced (first occurrence); requests whose prompt does not
    contain their subject contribute nothing."""
    out = []
    for r in requests:
        subject = r.get("subject")
        if not isinstance(subject, str) or not subject or subject not in r["prompt"]:
            continue
        out += [r["prompt"].replace(subject, e, 1) for e in swap_entities(subject, count, seed)]
    return out


ESSENCE_TEMPLATES = ("{} is a", "{} was", "{} has")  # the subject alone, no relation of any evaluation item


def essence_prompts(requests) -> list[str]:
    """ESSENCE_TEMPLATES filled with each request's subject (requests without a subject contribute nothing)."""
    out = []
    for r in requests:
        subject = r.get("subject")
        if isinstance(subject, str) and subject.strip():
            out += [t.format(subject.strip()) for t in ESSENCE_TEMPLATES]
    return out


def warn_missing_subjects(requests, weight: float, field: str = "kl_subject_weight",
                          in_prompt: bool = True) -> list[int]:
    """Warn (and return their indices) about requests a subject term cannot use: no `subject`, or (`in_prompt`)
    one that does not occur in the prompt. Silent skipping would report a regularized edit that was not."""
    def usable(r) -> bool:
        subject = r.get("subject")
        if not isinstance(subject, str):
            return False
        return (bool(subject) and subject in r["prompt"]) if in_prompt else bool(subject.strip())

    missing = [i for i, r in enumerate(requests) if not usable(r)]
    if missing:
        where = " that occurs in their prompt" if in_prompt else ""
        warnings.warn(f"{field}={weight}: request(s) {missing} have no `subject`{where}, so the {field} term leaves "
                      "them unregularized; give each request its subject (EasyEdit: editor.edit(..., subject=[...])) "
                      f"or set {field}: 0", stacklevel=3)
    return missing


def kl(ref_logp: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (masked) positions of KL(p_ref ‖ softmax(logits)); inputs (..., V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    per = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    if mask is None:
        return per.mean()
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp(min=1)


def prompt_positions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions t predicting a prompt token t+1 in some row, (B, len) mask of the rows where they do)."""
    inside = (batch.attention_mask[:, 1:] == 1) & (batch.labels[:, 1:] == IGNORE_INDEX)
    pos = inside.any(0).nonzero().flatten()
    return pos, inside[:, pos]


@dataclass
class SubjectBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last: torch.Tensor  # index of each row's last prompt token
    ref_logp: torch.Tensor | None = None  # (rows, V), pre-edit


def subject_batch(tok, requests, count: int, seed: int, device) -> SubjectBatch | None:
    return prompt_batch(tok, swapped_prompts(requests, count, seed), device)


def prompt_batch(tok, prompts: list[str], device) -> SubjectBatch | None:
    """Right-padded prompts and the index of each one's last token (None for no prompt)."""
    if not prompts:
        return None
    ids = [tok(p)["input_ids"] for p in prompts]
    T = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), T), pad_id(tok), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, row in enumerate(ids):
        input_ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
    last = torch.tensor([len(row) - 1 for row in ids])
    return SubjectBatch(input_ids.to(device), mask.to(device), last.to(device))


class Regularizer:
    """The KL terms of one edit. `logits_at(ids, mask, positions)` runs the model (with whatever hooks are
    active) and returns the logits at `positions` only. Call `reference` before the update is active."""

    def __init__(self, tok, requests, batch, hparams, device):
        self.prompt_weight = float(getattr(hparams, "kl_prompt_weight", 0.0))
        self.subject_weight = float(getattr(hparams, "kl_subject_weight", 0.0))
        self.prompt_pos, self.prompt_mask = prompt_positions(batch) if self.prompt_weight else (None, None)
        if self.prompt_pos is not None and len(self.prompt_pos) == 0:
            self.prompt_weight = 0.0
        self.subject = None
        if self.subject_weight:
            warn_missing_subjects(requests, self.subject_weight)
            self.subject = subject_batch(tok, requests, int(hparams.kl_subject_count), hparams.seed, device)
        self.essence_weight = float(getattr(hparams, "kl_essence_weight", 0.0))
        self.essence = None
        if self.essence_weight:
            warn_missing_subjects(requests, self.essence_weight, "kl_essence_weight", in_prompt=False)
            self.essence = prompt_batch(tok, essence_prompts(requests), device)
        self.prompt_ref = None

    @property
    def active(self) -> bool:
        return bool(self.prompt_weight) or self.subject is not None or self.essence is not None

    def _subject_logits(self, logits_at, s: SubjectBatch | None = None) -> torch.Tensor:
        s = s if s is not None else self.subject
        pos = torch.unique(s.last)
        logits = logits_at(s.input_ids, s.attention_mask, pos)  # (rows, len(pos), V)
        col = torch.searchsorted(pos, s.last)
        return logits[torch.arange(len(col), device=logits.device), col]

    @torch.no_grad()
    def reference(self, logits_at, batch) -> None:
        if self.prompt_weight:
            logits = logits_at(batch.input_ids, batch.attention_mask, self.prompt_pos)
            self.prompt_ref = torch.log_softmax(logits.float(), -1)
        if self.subject is not None:
            self.subject.ref_logp = torch.log_softmax(self._subject_logits(logits_at).float(), -1)
        if self.essence is not None:
            self.essence.ref_logp = torch.log_softmax(self._subject_logits(logits_at, self.essence).float(), -1)

    def prompt_term(self, logits_at_prompt: torch.Tensor) -> torch.Tensor:
        return self.prompt_weight * kl(self.prompt_ref, logits_at_prompt, self.prompt_mask)

    def subject_term(self, logits_at) -> torch.Tensor:
        return self.subject_weight * kl(self.subject.ref_logp, self._subject_logits(logits_at))

    def essence_term(self, logits_at) -> torch.Tensor:
        return self.essence_weight * kl(self.essence.ref_logp, self._subject_logits(logits_at, self.essence))
