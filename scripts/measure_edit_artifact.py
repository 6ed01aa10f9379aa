"""Size of one edit file and time to apply / revert it, on SmolLM2-135M (the numbers in the README).

    PYTHONPATH=. python scripts/measure_edit_artifact.py [--fine] [--out results/edit_artifact.json]

One counterfactual request, edited with the shipped hparams (hparams/KNE/smollm2-135m.yaml, and with
--fine hparams/FiNE/smollm2-135m.yaml) on 1 CPU thread. Checks that apply on a fresh base model is
bit-identical to the edited model and that revert gives the base back, and times both (with the
fingerprint check, and with force=True which skips it). Also prints the size a KNE edit would have on
Llama-2-7b with hparams/KNE/llama-7b.yaml, computed from its shapes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST = {"prompt": "The capital of France is", "target_new": "Rome", "ground_truth": "Paris"}


def same(model, state) -> bool:
    from easyedit_kne.edit_artifact import same_bits

    return all(same_bits(v, state[k]) for k, v in model.state_dict().items())


def timed(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(alg: str, base, tok) -> dict:
    from easyedit_kne import Edit

    if alg == "KNE":
        from easyedit_kne import KNEHyperParams as HParams
        from easyedit_kne import apply_kne_to_model as edit_fn
    else:
        from easyedit_kne import FiNEHyperParams as HParams
        from easyedit_kne import apply_fine_to_model as edit_fn
    hp = HParams.from_hparams(os.path.join(REPO, "hparams", alg, "smollm2-135m.yaml"))
    original = {k: v.clone() for k, v in base.state_dict().items()}
    start = time.perf_counter()
    edited, _, edit = edit_fn(base, tok, [REQUEST], hp, copy=True, return_edit=True)
    edit_seconds = time.perf_counter() - start
    edited_state = {k: v.clone() for k, v in edited.state_dict().items()}
    del edited
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "edit.safetensors")
        edit.save(path)
        size = os.path.getsize(path)
        loaded = Edit.load(path)
    model = copy.deepcopy(base)
    loaded.apply(model)
    assert same(model, edited_state), "apply is not bit-identical to the edited model"
    loaded.revert(model)
    assert same(model, original), "revert did not restore the base model"
    from easyedit_kne.cache import model_fingerprint

    row = {"alg": alg, "dtype": str(loaded.dtype), "weights": len(loaded.modules), "neurons": loaded.num_neurons,
           "file_bytes": size, "tensor_bytes": loaded.num_bytes, "edit_seconds": round(edit_seconds, 1),
           "fingerprint_seconds": timed(lambda: model_fingerprint(model))}
    applies, reverts, forced = [], [], []
    for _ in range(3):
        t0 = time.perf_counter()
        loaded.apply(model)
        t1 = time.perf_counter()
        loaded.revert(model)
        t2 = time.perf_counter()
        loaded.apply(model, force=True)
        t3 = time.perf_counter()
        loaded.revert(model)
        applies.append(t1 - t0)
        reverts.append(t2 - t1)
        forced.append(t3 - t2)
    row.update(apply_seconds=min(applies), revert_seconds=min(reverts), apply_force_seconds=min(forced))
    assert same(model, original)
    return row


def llama7b_kne_size(dtype_bytes: int) -> dict:
    """KNE with hparams/KNE/llama-7b.yaml on Llama-2-7b: mlp.down_proj (4096 x 11008), in axis, p=1 global."""
    from easyedit_kne import KNEHyperParams

    hp = KNEHyperParams.from_hparams(os.path.join(REPO, "hparams", "KNE", "llama-7b.yaml"))
    assert hp.target_modules == ["mlp.down_proj"] and hp.neuron_axis == "auto" and hp.selection_scope == "global"
    hidden, inter, layers = 4096, 11008, 32
    neurons = math.ceil(layers * inter * hp.p / 100)  # at most; only positive scores are kept
    per_neuron = 2 * hidden * dtype_bytes + 8  # a column before and after, and its int64 index
    return {"neurons": neurons, "bytes": neurons * per_neuron, "full_model_bytes": 6_738_415_616 * dtype_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fine", action="store_true", help="also a FiNE edit")
    parser.add_argument("--out", default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from easyedit_kne.models import load_model

    base, tok = load_model("smollm2-135m")
    rows = [measure("KNE", base, tok)] + ([measure("FiNE", base, tok)] if args.fine else [])
    result = {"smollm2": rows, "llama2_7b_kne_fp16": llama7b_kne_size(2), "llama2_7b_kne_fp32": llama7b_kne_size(4),
              "smollm2_model_bytes": sum(p.numel() * p.element_size() for p in base.parameters()),
              "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
