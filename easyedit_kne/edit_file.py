"""The bytes of an edit file: safetensors tensors, JSON metadata and a SHA-256 over both (no pickle).

`pack` writes the file's bytes from the metadata dict and the tensors; `unpack` checks a file's header,
checksum and format before returning them. What the tensors and metadata mean is edit_artifact.py's.
"""

from __future__ import annotations

import hashlib
import json

import torch

FORMAT = "easyedit-kne-edit"
FORMAT_VERSION = 1
META_KEY = "easyedit_kne.edit"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def checksum(meta_json: str, tensors: dict) -> str:
    """SHA-256 over the metadata JSON and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def pack(meta: dict, tensors: dict) -> bytes:
    from safetensors.torch import save

    meta_json = json.dumps(meta, sort_keys=True, default=str)
    return save(tensors, metadata={META_KEY: meta_json, "checksum": checksum(meta_json, tensors)})


def unpack(data: bytes) -> tuple[dict, dict]:
    """(metadata, tensors) of an edit file; ValueError when it is not one (truncated, corrupted, other format)."""
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    header_meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    raw = header_meta.get(META_KEY)
    if raw is None:
        raise ValueError(f"no {META_KEY!r} metadata")
    tensors = load(data)
    if header_meta.get("checksum") != checksum(raw, tensors):
        raise ValueError("checksum mismatch")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')!r} v{meta.get('format_version')}, expected {FORMAT} "
                         f"v{FORMAT_VERSION}")
    return meta, tensors
