"""`easyedit-kne edit` (make one KNE or FiNE edit, save it as a small edit file) and `easyedit-kne apply`
(apply edit files to a base model and save a plain Hugging Face folder). Light: imports happen in the
commands, so `easyedit-kne --help` loads no torch."""

from __future__ import annotations

import json
import os
import time


def _alg_name(path: str) -> str:
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--hparams: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    alg = config.get("alg_name") if isinstance(config, dict) else None
    if alg not in ("KNE", "FiNE"):
        raise ValueError(f"--hparams {path}: alg_name={alg!r}; this command edits with alg_name KNE or FiNE")
    return alg


def load_requests(path: str, data_type: str | None = None, size: int = 0) -> list[dict]:
    """A KnowEdit file (type given, or guessed from the file name) or a JSON list of EasyEdit requests."""
    from .knowedit import guess_data_type, load_knowedit
    from .tokens import check_requests

    if data_type is None:
        try:
            data_type = guess_data_type(path)
        except ValueError:
            data_type = "requests"
    if data_type != "requests":
        return load_knowedit(path, data_type=data_type, size=size or None)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        requests = json.load(f)
    if isinstance(requests, dict):
        requests = [requests]
    return check_requests(requests[:size] if size else requests)


def _device(hparams, override):
    import torch

    device = hparams.device if override is None else override
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{device}" if isinstance(device, int) else str(device)


def _edit(args) -> int:
    from .models import load_model

    if _alg_name(args.hparams) == "KNE":
        from .hparams import KNEHyperParams as HParams
        from .kne_main import apply_kne_to_model as edit_fn
    else:
        from .fine import FiNEHyperParams as HParams
        from .fine.fine_main import apply_fine_to_model as edit_fn
    hparams = HParams.from_hparams(args.hparams)
    requests = load_requests(args.data, args.data_type, args.size)
    dtype = args.dtype or ("float16" if hparams.fp16 else None)
    model, tok = load_model(args.model or hparams.model_name, device=_device(hparams, args.device), dtype=dtype)
    start = time.perf_counter()
    _, _, edit = edit_fn(model, tok, requests, hparams, return_edit=True)
    seconds = time.perf_counter() - start
    edit.save(args.out)
    print(f"{edit} from {len(requests)} request(s) in {seconds:.1f}s -> {args.out} "
          f"({os.path.getsize(args.out)} bytes)")
    return 0


def _apply(args) -> int:
    from transformers import AutoTokenizer

    from .edit_artifact import Edit
    from .models import load_model, resolve_model_name

    edits = [Edit.load(p) for p in args.edit]  # every file is checked before the model is loaded
    dtypes = {e.dtype for e in edits}
    if args.dtype is None and len(dtypes) > 1:
        raise ValueError(f"the edit files were made in different dtypes {sorted(map(str, dtypes))}; pass --dtype")
    model, _ = load_model(args.base_model, device=args.device, dtype=args.dtype or edits[0].dtype)
    for path, edit in zip(args.edit, edits, strict=True):
        start = time.perf_counter()
        edit.apply(model, force=args.force)
        print(f"applied {path}: {edit} in {time.perf_counter() - start:.2f}s")
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(resolve_model_name(args.base_model), local_files_only=True).save_pretrained(args.out)
    print(f"edited model -> {args.out}")
    return 0


def add_parsers(sub) -> None:
    """Add the `edit` and `apply` commands to the `easyedit-kne` argparse subparsers."""
    p = sub.add_parser("edit", help="make one KNE or FiNE edit (by the hparams' alg_name) and save it as an edit file")
    p.add_argument("--hparams", required=True, help="KNE or FiNE hparams YAML")
    p.add_argument("--data", required=True, help="KnowEdit JSON file, or a JSON list of requests "
                   "({prompt, target_new, ...}); all of them are edited together")
    p.add_argument("--data-type", default=None,
                   help="zsre | counterfact | recent | wikibio | requests (default: guessed from the file name, "
                   "else requests)")
    p.add_argument("--size", type=int, default=0, help="first N records (0 = all)")
    p.add_argument("--model", default=None, help="model path or config name (default: hparams model_name)")
    p.add_argument("--device", default=None, help="default: the hparams' device")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float16 if fp16 else float32)")
    p.add_argument("--out", required=True, help="edit file to write (.safetensors)")
    p.set_defaults(fn=_edit)
    p = sub.add_parser("apply", help="apply edit files (in order) to a base model; save a plain HF folder")
    p.add_argument("base_model", help="model path or config name the edits were made on")
    p.add_argument("edit", nargs="+", help="edit file(s), applied in the order given")
    p.add_argument("--out", required=True, help="folder for save_pretrained (model and tokenizer)")
    p.add_argument("--dtype", default=None, help="default: the dtype the edits were made in")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="apply even if the base model's fingerprint differs")
    p.set_defaults(fn=_apply)
