"""Pre-edit evaluation, computed once per (model fingerprint, item content, evaluation config) and reused by
every method and run.

    cache = PreEvalCache("benchmarks/pre_eval", model)          # fingerprints the (unedited) model once
    metrics = pre_evaluate(model, tok, request, case_id, evaluate, cache)   # the tuner's entry point too

Files: <root>/<model fingerprint[:16]>/<key>.json, written atomically; each holds its key, the metrics and
the sha256 of the metrics' canonical JSON. A file that does not parse, names another key or fails its
checksum is reported and recomputed (then overwritten), never trusted. The key hashes the fingerprint,
the device type, the request (every field: prompts, targets, locality and portability) and what the
pre-edit pass computes (max_length, exact match, and with pre-edit fluency its length and seed + case id).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

PRE_EVAL_VERSION = 1


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=True).encode()


def pre_eval_key(fingerprint: str, request: dict, eval_config: dict, device: str = "cpu") -> str:
    body = {"v": PRE_EVAL_VERSION, "model": fingerprint, "device": str(device).split(":")[0],
            "request": request, "eval": eval_config}
    return hashlib.sha256(_canonical(body)).hexdigest()


class PreEvalCache:
    """Content-addressed pre-edit metrics under `root` for one model (fingerprinted at construction)."""

    def __init__(self, root: str | os.PathLike, model=None, fingerprint: str | None = None):
        if fingerprint is None:
            if model is None:
                raise ValueError("PreEvalCache: pass model= (fingerprinted) or fingerprint=")
            from easyedit_kne.cache import model_fingerprint

            fingerprint = model_fingerprint(model)
        self.fingerprint = fingerprint
        self.dir = Path(root) / fingerprint[:16]
        self.hits = self.misses = self.rejected = 0

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            ok = (isinstance(data, dict) and data.get("key") == key and data.get("fingerprint") == self.fingerprint
                  and data.get("sha256") == hashlib.sha256(_canonical(data.get("metrics"))).hexdigest())
        except (OSError, ValueError) as err:
            ok, data = False, str(err)
        if not ok:
            warnings.warn(f"{path}: damaged pre-edit cache file (bad JSON, key or checksum); recomputing",
                          stacklevel=2)
            self.rejected += 1
            self.misses += 1
            return None
        self.hits += 1
        return data["metrics"]

    def put(self, key: str, metrics: dict) -> None:
        from easyedit_kne.atomic import write_json_atomic

        metrics = json.loads(_canonical(metrics))  # what a reader gets back (tuples -> lists)
        write_json_atomic(self.path(key), {"key": key, "fingerprint": self.fingerprint, "version": PRE_EVAL_VERSION,
                                           "sha256": hashlib.sha256(_canonical(metrics)).hexdigest(),
                                           "metrics": metrics}, allow_nan=True)


def pre_evaluate(model, tok, request: dict, case_id: int, evaluate, cache: PreEvalCache | None) -> dict:
    """The pre-edit metrics of `request` from the cache, or computed by `evaluate` (an Evaluator) and stored."""
    if cache is None:
        return evaluate.compute(model, tok, request, case_id, "pre")
    key = pre_eval_key(cache.fingerprint, request, evaluate.config(case_id, "pre"),
                       str(next(model.parameters()).device))
    metrics = cache.get(key)
    if metrics is None:
        metrics = evaluate.compute(model, tok, request, case_id, "pre")
        cache.put(key, metrics)
        metrics = json.loads(_canonical(metrics))
    return metrics
