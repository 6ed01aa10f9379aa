"""Surface variants of a request's subject for KNE's edit loss (`subject_variants`, off by default).

A fact is asked about under other spellings of its subject: without diacritics ("Jindřich" -> "Jindrich"), with a
plain hyphen for a dash, without middle initials ("Thomas R Unnasch" -> "Thomas Unnasch"), as first and last
name only. An edit trained on one token sequence need not reach the others. With `subject_variants: k`, each
request whose prompt contains its `subject` is also trained with up to k such variants put in its place (the
same target), and `stop_on: accuracy` waits until the target is the argmax in all of them, as for the context
prefixes (contexts.py). The variants come from the subject string alone, by the rules below, never from an
evaluation set's alias lists.
"""

from __future__ import annotations

import re
import unicodedata

_DASHES = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-"})
_INITIAL = re.compile(r"^[A-Z]\.?$")


def ascii_fold(text: str) -> str:
    """The text without combining marks (NFKD, marks dropped): "Jindřich" -> "Jindrich"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _is_name(tokens: list[str]) -> bool:
    """Looks like a personal name: 3-5 capitalised alphabetic words or initials."""
    return 3 <= len(tokens) <= 5 and all(t[0].isupper() and t.replace(".", "").replace("-", "").isalpha()
                                         for t in tokens)


def subject_variants(subject: str) -> list[str]:
    """The subject's surface variants, most conservative first, each different from the subject and from
    each other: folded diacritics, plain hyphens, without middle initials, first and last name only."""
    candidates = [ascii_fold(subject), subject.translate(_DASHES)]
    tokens = subject.split()
    if _is_name(tokens):
        inner = [t for t in tokens[1:-1] if not _INITIAL.match(t)]
        candidates.append(" ".join([tokens[0], *inner, tokens[-1]]))
        candidates.append(f"{tokens[0]} {tokens[-1]}")
    out: list[str] = []
    for c in candidates:
        c = " ".join(c.split())
        if c and c != subject and c not in out:
            out.append(c)
    return out


def variant_requests(requests, count: int) -> list[dict]:
    """Copies of the requests with up to `count` subject variants in place of the subject in the prompt
    (none for count 0, or for a request without a subject that its prompt contains)."""
    if count <= 0:
        return []
    out = []
    for r in requests:
        subject = r.get("subject")
        if not subject or subject not in r["prompt"]:
            continue
        for v in subject_variants(subject)[:count]:
            out.append(dict(r, prompt=r["prompt"].replace(subject, v, 1), subject=v))
    return out


__all__ = ["ascii_fold", "subject_variants", "variant_requests"]
