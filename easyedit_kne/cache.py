"""Localization cache: per-request attribution scores, content-addressed, written atomically.

A key hashes (model weights fingerprint, computed once per model state; target modules and axes,
ig_steps, ig_method, max_length, request text),
so a later run with more items, another p, scope or aggregation reuses every score already computed,
while any change of the weights or of the attribution settings misses. Each file is safetensors with a
checksum of its tensors in the metadata; a truncated or corrupted file is reported and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import weakref

import torch

from .atomic import atomic_path
from .tokens import target_text

CACHE_VERSION = 1
_SAMPLE = 4096


_CHUNK = 1 << 20
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (state, fingerprint)


def _parameter_state(model) -> tuple:
    """Identity of the current weights: which tensors, where their data lives, and their in-place version
    counters (any in-place write bumps `_version`; writes through `p.data` do not: call with refresh=True)."""
    return tuple((name, id(p), p.data_ptr(), p._version, tuple(p.shape), str(p.dtype))
                 for name, p in model.named_parameters())


def _hash_parameters(model) -> str:
    """Name, shape, dtype, a strided sample and float64 sums (Σx, Σ|x|, Σx²) of every parameter, the sums
    accumulated chunk by chunk (at most _CHUNK values converted at a time, never a float64 copy of a weight)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            stride = max(1, flat.numel() // _SAMPLE)
            sample = flat[::stride][:_SAMPLE].float().cpu()
            stats = torch.zeros(3, dtype=torch.float64, device=flat.device)
            for chunk in flat.split(_CHUNK):
                c = chunk.double()
                stats += torch.stack([c.sum(), c.abs().sum(), (c * c).sum()])
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            h.update(sample.numpy().tobytes())
            h.update(stats.cpu().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model, refresh: bool = False) -> str:
    """A hash of the model's weights, computed once per model state: cached on the model until a parameter
    is replaced or written in place (its `_version` moves). A sparse edit moves the tensor sums."""
    state = _parameter_state(model)
    cached = _FINGERPRINTS.get(model)
    if not refresh and cached is not None and cached[0] == state:
        return cached[1]
    fingerprint = _hash_parameters(model)
    _FINGERPRINTS[model] = (_parameter_state(model), fingerprint)
    return fingerprint


def _tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def _header_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's JSON header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 or n > len(data) - 8:
        raise ValueError("truncated header")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


class ScoreCache:
    """Directory of per-request score files. `fingerprint` is computed once per cache object unless
    given; call `refresh(model)` after editing the model."""

    def __init__(self, cache_dir: str | os.PathLike, model=None, fingerprint: str | None = None):
        self.dir = os.fspath(cache_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = fingerprint or (model_fingerprint(model) if model is not None else None)
        self.hits = 0
        self.misses = 0

    def refresh(self, model) -> None:
        self.fingerprint = model_fingerprint(model, refresh=True)

    def key(self, request, targets, hparams) -> str:
        if self.fingerprint is None:
            raise ValueError("ScoreCache: no model fingerprint; pass model= or call refresh(model)")
        content = {
            "v": CACHE_VERSION,
            "model": self.fingerprint,
            "modules": [[t.name, t.axis, t.d_out, t.d_in] for t in targets],
            "ig_steps": hparams.ig_steps,
            "max_length": hparams.max_length,
            "prompt": request["prompt"],
            "target_new": target_text(request),
        }
        method = getattr(hparams, "ig_method", "riemann_right")
        if method != "riemann_right":  # keys written before ig_method existed stay valid
            content["ig_method"] = method
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], f"{key}.safetensors")

    def get(self, key: str, targets) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load

        path = self.path(key)
        if not os.path.exists(path):
            self.misses += 1
            return None
        try:
            # one read of one open file: `safe_open` reopens the path for the tensors, so a concurrent
            # writer's rename in between would pair this file's metadata with another file's tensors
            with open(path, "rb") as f:
                data = f.read()
            meta = _header_metadata(data)
            tensors = load(data)
            if meta.get("checksum") != _tensor_checksum(tensors):
                raise ValueError("checksum mismatch")
            if sorted(tensors) != sorted(t.name for t in targets):
                raise ValueError("module set differs from the request")
        except Exception as err:  # truncated, corrupted, or foreign file: recompute
            warnings.warn(f"localization cache: {path} is unreadable ({err}); recomputing it", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, key: str, scores: dict[str, torch.Tensor], request=None) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().float().cpu().contiguous() for k, v in scores.items()}
        meta = {"checksum": _tensor_checksum(tensors), "version": str(CACHE_VERSION)}
        if request is not None:
            meta["prompt"] = request["prompt"]
            meta["target_new"] = target_text(request)
        with atomic_path(self.path(key)) as tmp:
            save_file(tensors, tmp, metadata=meta)
