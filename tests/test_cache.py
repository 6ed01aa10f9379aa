"""Localization cache: reuse across runs, misses on changed weights, corruption detection, atomicity."""

import os
import threading

import pytest
import torch

from easyedit_kne import KNEHyperParams, ScoreCache, localize
from easyedit_kne.attribution import attribute_per_request

REQUESTS = [{"prompt": "The capital of Velaria is", "target_new": "Morn"},
            {"prompt": "Zentor is led by", "target_new": "Alice"}]


def _hp(tmp_path, **kw):
    kw = {"ig_steps": 3, **kw}
    return KNEHyperParams(model_name="x", cache_dir=str(tmp_path / "cache"), **kw)


def test_reuse_across_p_and_more_items(tiny_llama, tiny_tok, tmp_path):
    hp = _hp(tmp_path, p=5)
    first = localize(tiny_llama, tiny_tok, REQUESTS[:1], hp, progress=False)
    assert first.metadata["cache"] == {"hits": 0, "misses": 1}
    hp2 = _hp(tmp_path, p=20, score_aggregation="mean")
    second = localize(tiny_llama, tiny_tok, REQUESTS, hp2, progress=False)
    assert second.metadata["cache"] == {"hits": 1, "misses": 1}
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2
    cached = ScoreCache(hp.cache_dir, model=tiny_llama)
    from easyedit_kne.modules import targets_from_hparams

    targets = targets_from_hparams(tiny_llama, hp)
    fresh = attribute_per_request(tiny_llama, tiny_tok, REQUESTS[:1], hp, progress=False)[0]
    got = cached.get(cached.key(REQUESTS[0], targets, hp), targets)
    assert all(torch.equal(got[k], fresh[k]) for k in fresh)


def test_changed_weights_or_steps_miss(tiny_tok, tmp_path):
    import tiny_models

    model = tiny_models.make_model("llama", tiny_tok)
    hp = _hp(tmp_path)
    localize(model, tiny_tok, REQUESTS[:1], hp, progress=False)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    again = localize(model, tiny_tok, REQUESTS[:1], hp, progress=False)
    assert again.metadata["cache"]["misses"] == 1
    other_steps = localize(model, tiny_tok, REQUESTS[:1], _hp(tmp_path, ig_steps=4), progress=False)
    assert other_steps.metadata["cache"]["misses"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupted_file_is_detected_and_recomputed(tiny_llama, tiny_tok, tmp_path, damage):
    hp = _hp(tmp_path)
    base = localize(tiny_llama, tiny_tok, REQUESTS[:1], hp, progress=False)
    (path,) = list((tmp_path / "cache").rglob("*.safetensors"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = localize(tiny_llama, tiny_tok, REQUESTS[:1], hp, progress=False)
    assert again.metadata["cache"]["misses"] == 1
    assert {k: v.tolist() for k, v in again.neurons.items()} == {k: v.tolist() for k, v in base.neurons.items()}
    third = localize(tiny_llama, tiny_tok, REQUESTS[:1], hp, progress=False)  # rewritten and valid
    assert third.metadata["cache"]["hits"] == 1


def test_concurrent_writers_leave_a_valid_file(tmp_path):
    cache = ScoreCache(tmp_path, fingerprint="f")
    scores = [{"a": torch.full((1000,), float(i))} for i in range(8)]
    threads = [threading.Thread(target=cache.put, args=("k" * 64, s)) for s in scores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    class T:
        name = "a"

    got = cache.get("k" * 64, [T()])
    assert got is not None and len(set(got["a"].tolist())) == 1
    leftovers = [f for f in os.listdir(os.path.dirname(cache.path("k" * 64))) if f.endswith(".tmp")]
    assert leftovers == []


def test_fingerprint_once_per_model_state(tiny_tok, monkeypatch):
    import tiny_models

    from easyedit_kne import cache as cache_module

    calls = []
    real = cache_module._hash_parameters
    monkeypatch.setattr(cache_module, "_hash_parameters", lambda m: calls.append(1) or real(m))
    model = tiny_models.make_model("llama", tiny_tok)
    first = cache_module.model_fingerprint(model)
    assert cache_module.model_fingerprint(model) == first and len(calls) == 1  # no rehash
    weight = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight[3, 5] += 1e-3  # a sparse in-place edit
    edited = cache_module.model_fingerprint(model)
    assert edited != first and len(calls) == 2
    with torch.no_grad():
        weight[3, 5] -= 1e-3
    assert cache_module.model_fingerprint(model) != edited and len(calls) == 3
    other = tiny_models.make_model("llama", tiny_tok)  # same weights, another object: same fingerprint
    assert cache_module.model_fingerprint(other) == cache_module.model_fingerprint(model)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 2)  # a replaced parameter
    assert cache_module.model_fingerprint(model) != edited


def test_fingerprint_converts_chunks_not_whole_weights(tiny_tok, monkeypatch):
    """The float64 sums go chunk by chunk: no float64 tensor larger than a chunk is made."""
    import tiny_models

    from easyedit_kne import cache as cache_module

    model = tiny_models.make_model("llama", tiny_tok)
    monkeypatch.setattr(cache_module, "_CHUNK", 64)
    largest = []
    real_double = torch.Tensor.double
    monkeypatch.setattr(torch.Tensor, "double", lambda t: largest.append(t.numel()) or real_double(t))
    cache_module._hash_parameters(model)
    assert largest and max(largest) <= 64
