"""Context prefixes for KNE's edit loss (`context_prefixes`, off by default).

With `context_prefixes: k`, each request is also trained as "{prefix} {prompt}" for k prefixes from the
package's list (easyedit_kne/data/context_prefixes.txt, not from any evaluation set). The target NLL is then
averaged over the plain and the prefixed prompts, and `stop_on: accuracy` waits until the target is the argmax
in all of them. The aim is an edit that holds when the question comes after other text, and that
generalizes beyond the exact token sequence it was trained on (ROME and MEMIT train on model-generated
context prefixes for the same reason). The prefixes chosen for a request depend only on its prompt and the
seed (a stable hash), so runs are reproducible.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def prefixes() -> tuple[str, ...]:
    text = resources.files("easyedit_kne").joinpath("data/context_prefixes.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def choose_prefixes(prompt: str, count: int, seed: int) -> list[str]:
    """`count` distinct prefixes for one prompt, chosen by a stable hash of (prompt, seed)."""
    pool = prefixes()
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(pool, min(count, len(pool)))


def context_requests(requests, count: int, seed: int) -> list[dict]:
    """Copies of the requests with "{prefix} " before their prompt, `count` per request (none for count 0)."""
    if count <= 0:
        return []
    return [dict(r, prompt=f"{p} {r['prompt']}") for r in requests for p in choose_prefixes(r["prompt"], count, seed)]
