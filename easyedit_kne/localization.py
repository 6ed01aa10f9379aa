"""Localization: attribution over requests, then selection of the knowledge neuronal ensemble.

`localized_ensemble` localizes once per localization set in a process: an EasyEdit BaseEditor loop calls
apply_kne_to_model once per edit, and the ensemble of the same (model weights, localization requests,
localization hparams) is reused from an in-process memo instead of being localized again; a saved
ensemble (`ensemble_path`) is read once per file version.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

from .attribution import aggregate, attribute_per_request
from .cache import ScoreCache, model_fingerprint
from .ensemble import KnowledgeNeuronalEnsemble
from .modules import targets_from_hparams
from .tokens import check_requests, target_text


def localize(model, tok, requests, hparams, cache: ScoreCache | None = None, method: str = "fast",
             progress: bool = True) -> KnowledgeNeuronalEnsemble:
    """Score every neuron of the target modules on `requests` and keep the top `hparams.p` percent."""
    hparams.validate()  # fields may have been changed since construction
    requests = check_requests(requests)
    targets = targets_from_hparams(model, hparams)
    fingerprint = model_fingerprint(model)
    if cache is None and hparams.cache_dir:
        cache = ScoreCache(hparams.cache_dir, fingerprint=fingerprint)
    elif cache is not None:
        cache.fingerprint = fingerprint
    start = time.perf_counter()
    per_request = attribute_per_request(model, tok, requests, hparams, method, cache, progress)
    scores = aggregate(per_request, hparams.score_aggregation)
    meta = {
        "model_fingerprint": fingerprint,
        "hparams": hparams.to_dict(),
        "items": [{"prompt": r["prompt"], "target_new": target_text(r)} for r in requests],
        "seconds": round(time.perf_counter() - start, 3),
        "method": method,
    }
    if cache is not None:
        meta["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return KnowledgeNeuronalEnsemble.from_scores(scores, targets, hparams.p, hparams.selection_scope, meta)


def localization_requests(hparams, edit_requests) -> list:
    """The requests to localize on: a separate KnowEdit file when configured, else the edit requests."""
    if not hparams.localization_data:
        return edit_requests
    from .knowedit import load_knowedit

    edited = {r["prompt"] for r in edit_requests}
    items = load_knowedit(hparams.localization_data, data_type=hparams.localization_data_type)
    items = [r for r in items if r["prompt"] not in edited]  # keep localization disjoint from edits
    if hparams.localization_size:
        items = items[: hparams.localization_size]
    if not items:
        raise ValueError(f"localization_data={hparams.localization_data!r} has no item that is not edited")
    return items


# the hparams that decide which ensemble localization selects
# cache_dir is part of the key: a localization asked to fill an on-disk score cache runs (reading what that cache
# already holds), so the cache a user configured is populated for the next process
LOCALIZATION_FIELDS = ("target_modules", "layers", "neuron_axis", "p", "selection_scope", "ig_steps", "ig_method",
                       "max_length", "score_aggregation", "cache_dir")
_MEMO_SIZE = 8
_ENSEMBLES: OrderedDict = OrderedDict()  # (fingerprint, items, hparams) -> ensemble, least recently used first
_LOADED: OrderedDict = OrderedDict()  # (path, mtime, size) -> ensemble


def _remember(memo: OrderedDict, key, value) -> None:
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > _MEMO_SIZE:
        memo.popitem(last=False)


def clear_localization_memo() -> None:
    _ENSEMBLES.clear()
    _LOADED.clear()


def load_ensemble_once(path) -> KnowledgeNeuronalEnsemble:
    """A saved ensemble, read once per file version (path, modification time, size) in this process."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        _remember(_LOADED, key, KnowledgeNeuronalEnsemble.load(path))
    _LOADED.move_to_end(key)
    return _LOADED[key]


def localized_ensemble(model, tok, hparams, edit_requests, progress: bool = True
                       ) -> tuple[KnowledgeNeuronalEnsemble, float]:
    """(ensemble, seconds spent localizing): localizes on `localization_requests(hparams, edit_requests)`
    unless the same model state, requests and localization hparams were localized before in this process."""
    hparams.validate()
    requests = check_requests(localization_requests(hparams, edit_requests))
    key = (model_fingerprint(model),
           tuple((r["prompt"], target_text(r)) for r in requests),
           repr([getattr(hparams, f) for f in LOCALIZATION_FIELDS]))
    if key in _ENSEMBLES:
        _ENSEMBLES.move_to_end(key)
        return _ENSEMBLES[key], 0.0
    start = time.perf_counter()
    ensemble = localize(model, tok, requests, hparams, progress=progress)
    _remember(_ENSEMBLES, key, ensemble)
    return ensemble, time.perf_counter() - start
