"""Covariance statistics (MEMIT; ROME with mom2_adjustment)
--------------------------------------------------------
EasyEdit's `layer_stats` (easyeditor/models/rome/layer_stats.py) loads the second moment of a layer's
input from `stats_dir/<model>/<mom2_dataset>_stats/<layer>_<mom2_dtype>_mom2_<mom2_n_samples>.npz`, where
<model> is `model.config._name_or_path.rsplit("/")[-1]`, and otherwise computes it over Wikipedia (a dataset
download). The file is a numpy npz of its `CombinedStat(mom2=SecondMoment())` state: `mom2.constructor`,
`mom2.count` (number of token vectors), `mom2.mom2` (the sum of x xᵀ over them, in mom2_dtype) and
`sample_size` (checked against mom2_n_samples). `ensure_covariance_stats` writes exactly that from local
texts (`easyedit.mom2_text_file`, default the WikiBio passages of KnowEdit: Wikipedia text, and not an
evaluated dataset) under a `mom2_dataset` named after those texts (`local_<hash>`), so a Wikipedia cache is
never shadowed; a `.source.json` beside each file and summary.json say where the numbers come from."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

SECOND_MOMENT = "easyeditor.util.runningstats.SecondMoment()"  # mom2.constructor in the npz


# ------------------------------------------------------------------------------ covariance statistics
@dataclass
class CovariancePlan:
    texts: list[str]
    source: str  # what the texts are
    dataset_name: str  # EasyEdit's mom2_dataset (the cache folder <name>_stats)

    @property
    def n_samples(self) -> int:
        return len(self.texts)

    def describe(self) -> dict:
        return {"source": self.source, "mom2_dataset": self.dataset_name, "n_texts": self.n_samples}


def _texts_from_json(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    texts = []
    for rec in records:
        if isinstance(rec, str):
            texts.append(rec)
        elif isinstance(rec, dict):
            if isinstance(rec.get("text"), str):
                texts.append(rec["text"] + (" " + rec["labels"] if isinstance(rec.get("labels"), str) else ""))
            elif isinstance(rec.get("prompt"), str):
                target = rec.get("target_new") if isinstance(rec.get("target_new"), str) else ""
                texts.append(f"{rec['prompt']} {target}".strip())
    return texts


def covariance_plan(text_file: str | None, knowedit_dir: str | None, max_texts: int) -> CovariancePlan:
    """The texts the covariance statistics are computed on (see the module docstring)."""
    if text_file:
        path = Path(text_file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"easyedit.mom2_text_file={text_file!r} does not exist")
        if path.suffix == ".json":
            texts = _texts_from_json(path)
        else:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(path)
    else:
        # resolved, so run_config.json records ${knowedit_dir}/wikibio/... (bench/portable.py) however KNOWEDIT_DIR
        # is written (a relative KNOWEDIT_DIR once left its relative text there, and the resume check then refused
        # the same run started with an absolute one)
        base = Path(knowedit_dir or "").expanduser().resolve()
        files = [base / "wikibio" / "wikibio-train-all.json", base / "wikibio" / "wikibio-test-all.json"]
        if not all(f.is_file() for f in files):
            raise FileNotFoundError(
                f"covariance statistics need texts: no WikiBio files under {base / 'wikibio'}; give "
                "easyedit.mom2_text_file=<a .txt file, one text per line, or a KnowEdit JSON>")
        texts = [t for f in files for t in _texts_from_json(f)]
        source = "KnowEdit WikiBio passages (text + labels): " + ", ".join(str(f) for f in files)
    texts = [t for t in texts if t.strip()][: max(1, int(max_texts))]
    if not texts:
        raise ValueError(f"no texts for the covariance statistics in {source}")
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:10]
    return CovariancePlan(texts, source, f"local_{digest}")


def stats_file(stats_dir, model, dataset_name: str, layer_name: str, precision: str, sample_size: int) -> Path:
    """EasyEdit's layer_stats cache path (default batch_tokens, to_collect=['mom2'])."""
    model_name = model.config._name_or_path.rsplit("/")[-1]
    return (Path(stats_dir) / model_name / f"{dataset_name}_stats"
            / f"{layer_name}_{precision}_mom2_{sample_size}.npz")


def _max_positions(model) -> int:
    cfg = model.config
    for attr in ("n_positions", "max_sequence_length", "max_position_embeddings", "seq_length"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return 2048


class _AllInputsSeen(Exception):
    """Stops a statistics pass once every hooked layer has seen its input."""


def compute_second_moments(model, tok, layer_names: list[str], texts: list[str], *, batch_size: int = 8,
                           max_tokens: int = 2048, progress: bool = True) -> dict[str, tuple[torch.Tensor, int]]:
    """{layer: (Σ x xᵀ in float64, number of token vectors)} of each layer's input over the texts."""
    modules = dict(model.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise ValueError(f"covariance statistics: no module {missing} in the model")
    sums: dict[str, torch.Tensor] = {}
    counts = {n: 0 for n in layer_names}
    mask_holder: dict[str, torch.Tensor] = {}
    seen: set[str] = set()

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach()
            feats = x[mask_holder["mask"].to(x.device)].double()  # (tokens, d)
            if name not in sums:
                sums[name] = torch.zeros(feats.shape[1], feats.shape[1], dtype=torch.float64, device=x.device)
            sums[name] += feats.t() @ feats
            counts[name] += feats.shape[0]
            seen.add(name)
            if len(seen) == len(counts):  # every layer's input is in: the layers above and the LM head are not needed
                raise _AllInputsSeen
        return hook

    maxlen = min(_max_positions(model), max_tokens)
    device = next(model.parameters()).device
    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in layer_names]
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        with torch.no_grad():
            for i in tqdm(range(0, len(texts), batch_size), desc="covariance statistics", disable=not progress):
                enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=maxlen)
                mask_holder["mask"] = enc["attention_mask"].bool()
                seen.clear()
                try:
                    model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                          use_cache=False)
                except _AllInputsSeen:
                    pass
    finally:
        tok.padding_side = side
        for h in handles:
            h.remove()
    return {n: (sums[n].cpu(), counts[n]) for n in layer_names}


def write_stats_npz(path: Path, mom2_sum: torch.Tensor, count: int, precision: str, sample_size: int,
                    source: dict) -> None:
    """One EasyEdit layer_stats cache file (atomic) plus `<file>.source.json` describing the texts."""
    import numpy as np

    from easyedit_kne.atomic import atomic_path, write_json_atomic

    state = {
        "mom2.constructor": np.array(SECOND_MOMENT),
        "mom2.count": np.array(int(count)),
        "mom2.mom2": mom2_sum.numpy().astype(np.dtype(precision)),
        "sample_size": np.array(int(sample_size)),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **state)  # a file object: numpy adds no ".npz" to the temporary name
        f.flush()
        os.fsync(f.fileno())
    write_json_atomic(str(path) + ".source.json", source)


def ensure_covariance_stats(model, tok, hparams, plan: CovariancePlan, *, progress: bool = True) -> dict:
    """Write the layer_stats cache files EasyEdit will look for, unless they exist; returns a description."""
    precision = getattr(hparams, "mom2_dtype", "float32") or "float32"
    layer_names = [hparams.rewrite_module_tmp.format(layer) for layer in hparams.layers]
    files = {n: stats_file(hparams.stats_dir, model, plan.dataset_name, n, precision, plan.n_samples)
             for n in layer_names}
    todo = [n for n, f in files.items() if not f.is_file()]
    start = time.perf_counter()
    if todo:
        moments = compute_second_moments(model, tok, todo, plan.texts, progress=progress)
        for name in todo:
            mom2_sum, count = moments[name]
            write_stats_npz(files[name], mom2_sum, count, precision, plan.n_samples, {
                **plan.describe(), "layer": name, "token_vectors": count, "precision": precision,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "note": "computed by easyedit_kne.bench.covariance from local texts instead of EasyEdit's "
                        "Wikipedia sample"})
    return {**plan.describe(), "mom2_n_samples": plan.n_samples, "precision": precision,
            "files": [str(f) for f in files.values()], "computed_now": todo,
            "seconds": round(time.perf_counter() - start, 2)}
