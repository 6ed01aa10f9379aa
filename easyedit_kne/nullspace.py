"""Null-space projection of KNE's sparse update against preserved-key statistics (AlphaEdit's idea).

Math. A target module computes y = W x. Over a corpus of preserved text, its inputs ("keys") x have the
second moment C = Σ x xᵀ (d_in × d_in, summed over tokens). Let C = V Λ Vᵀ and keep the eigenvectors whose
eigenvalue is at most `nullspace_threshold` × λ_max: V₀ spans (numerically) the directions the preserved
keys do not use, and P = V₀ V₀ᵀ projects onto them. An update ΔW with ΔW P = ΔW gives ΔW x ≈ 0 for every
preserved key, so outputs on preserved text are left ~unchanged, whatever ΔW learns.

KNE's update is sparse, and the projection keeps it so:
* `out` axis (the update is n selected rows of W, the block B is n × d_in): each row delta is projected,
  B ← B P. Rows outside the ensemble stay zero.
* `in` axis (the update is n selected columns, B is n × d_out, the output change is x[idx] B): only the
  selected coordinates of x meet the update, so the statistics are restricted to them, C_idx = C[idx, idx]
  (n × n), with its own projector P_idx, and B ← P_idx B. Columns outside the ensemble stay zero.
Training is projected optimization: the block starts projected and is projected again after every
optimizer step (Adam's per-coordinate steps would leave the subspace otherwise), so the merged update lies
in the null space exactly (up to float rounding).

Statistics come from local text (default: the WikiBio passages of the KnowEdit folder, Wikipedia text that
is not an evaluated dataset; `nullspace_text`: a .txt file, one text per line, or a KnowEdit JSON) and are
cached on disk, content-addressed by (model fingerprint, module, texts, max_length), as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .atomic import atomic_path
from .hooks import Hooks


def load_texts(source: str | None, n: int) -> tuple[list[str], str]:
    """(texts, description): the first `n` texts of `source`, or of the WikiBio files when None."""
    if source is None:
        from .protocol import knowedit_dir

        base = knowedit_dir() / "wikibio"
        files = [base / "wikibio-train-all.json", base / "wikibio-test-all.json"]
        if not any(f.is_file() for f in files):
            raise FileNotFoundError(f"nullspace: no WikiBio texts under {base}; set nullspace_text to a .txt "
                                    "file (one text per line) or a KnowEdit JSON")
    else:
        files = [Path(source).expanduser()]
        if not files[0].is_file():
            raise FileNotFoundError(f"nullspace_text={source!r} does not exist")
    texts = []
    for f in files:
        if not f.is_file():
            continue
        if f.suffix == ".json":
            for rec in json.loads(f.read_text(encoding="utf-8")):
                t = rec.get("text") or rec.get("prompt") if isinstance(rec, dict) else None
                if isinstance(t, str) and t.strip():
                    texts.append(t)
        else:
            texts += [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"nullspace: no text found in {', '.join(map(str, files))}")
    return texts[:n], ",".join(str(f) for f in files)


@torch.no_grad()
def second_moments(model, tok, modules: dict[str, torch.nn.Module], texts, max_length: int
                   ) -> dict[str, torch.Tensor]:
    """Σ x xᵀ over the tokens of `texts` of each module's input x (fp64 sums, returned fp32)."""
    sums = {name: None for name in modules}
    device = model.get_input_embeddings().weight.device

    def make(name):
        def pre(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            s = x.t() @ x
            sums[name] = s if sums[name] is None else sums[name] + s
        return pre

    with Hooks() as hooks:
        for name, mod in modules.items():
            hooks.forward_pre(mod, make(name))
        for text in texts:
            ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"].to(device)
            model(input_ids=ids, use_cache=False)
    return {k: v.float().cpu() for k, v in sums.items()}


def _key(fingerprint: str, name: str, texts, max_length: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{name}|{max_length}|".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:32]


def cached_moments(model, tok, modules, hparams) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    from .cache import model_fingerprint

    texts, _ = load_texts(hparams.nullspace_text, hparams.nullspace_samples)
    root = Path(hparams.nullspace_cache_dir or Path.home() / ".cache" / "easyedit_kne" / "nullspace")
    fp = model_fingerprint(model)
    out, missing = {}, {}
    for name, mod in modules.items():
        path = root / f"{_key(fp, name, texts, hparams.max_length)}.safetensors"
        if path.is_file():
            out[name] = load_file(path)["mom2"]
        else:
            missing[name] = (mod, path)
    if missing:
        fresh = second_moments(model, tok, {n: m for n, (m, _) in missing.items()}, texts, hparams.max_length)
        os.makedirs(root, exist_ok=True)
        for name, (_, path) in missing.items():
            with atomic_path(path) as tmp:
                save_file({"mom2": fresh[name].contiguous()}, str(tmp))
            out[name] = fresh[name]
    return out


def null_projector(mom2: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = V₀V₀ᵀ over the eigenvectors of `mom2` with eigenvalue <= threshold × the largest."""
    evals, evecs = torch.linalg.eigh(mom2.double())
    keep = evals <= threshold * evals.max().clamp(min=1e-30)
    v0 = evecs[:, keep]
    return (v0 @ v0.t()).float()


def projectors(model, tok, updates, hparams) -> dict[str, tuple[str, torch.Tensor]]:
    """{update name: (how, P)}: how = 'right' (out axis: B ← B P) or 'left' (in axis: B ← P B)."""
    moments = cached_moments(model, tok, {u.name: u.module for u in updates}, hparams)
    out = {}
    for u in updates:
        c = moments[u.name].to(u.block.device)
        if u.axis == "out":
            out[u.name] = ("right", null_projector(c, hparams.nullspace_threshold))
        else:
            idx = u.index.to(c.device)
            out[u.name] = ("left", null_projector(c[idx][:, idx], hparams.nullspace_threshold))
    return out


@torch.no_grad()
def project_(updates, projs) -> None:
    for u in updates:
        if u.name not in projs:
            continue
        how, p = projs[u.name]
        u.block.copy_(u.block @ p if how == "right" else p @ u.block)
