"""Scores one configuration on dev items: single edits with rollback, EasyEdit-equivalent metrics.

The model is loaded once. Pre-edit metrics are computed once per item per process and reused by every
trial (the model is restored bit for bit from weights_copy after each edit, and checked). Attribution
scores are cached on disk (ScoreCache) and shared ensembles in memory, so localization is paid once per
(target modules, axis, layers, ig_steps) and dataset. Fluency is off unless asked for (a 100-token
generation per item would dominate a trial's time).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import protocol
from ..evaluate import compute_edit_quality, finalize_locality_metrics, summarize


@dataclass
class DevItems:
    dataset: str
    requests: list
    ids: list
    loc_requests: list = field(default_factory=list)
    loc_ids: list = field(default_factory=list)


def load_items(datasets: dict, localization_items: int, root=None) -> list[DevItems]:
    """Dev items (and localization items) of each dataset; refuses test items and overlaps."""
    out = []
    for dataset, n in datasets.items():
        if not n:
            continue
        reqs, ids = protocol.split_requests(dataset, "dev", int(n), root)
        loc_reqs, loc_ids = ([], [])
        if localization_items:
            loc_reqs, loc_ids = protocol.split_requests(dataset, "localization", int(localization_items), root)
        protocol.check_tuning_items(dataset, ids, loc_ids, root)
        out.append(DevItems(dataset, reqs, ids, loc_reqs, loc_ids))
    if not out:
        raise ValueError("tune: no dev item selected; give datasets like {zsre: 20}")
    return out


class Evaluator:
    def __init__(self, model, tok, method: str, items: list[DevItems], cache_dir: str, fluency: bool = False,
                 progress: bool = False):
        self.model, self.tok, self.method, self.items = model, tok, method, items
        self.cache_dir = cache_dir
        self.fluency = fluency
        self.progress = progress  # tqdm bars for the shared localization and each trial's items
        self.pre: dict[str, dict] = {}
        self.ensembles: dict = {}
        os.makedirs(cache_dir, exist_ok=True)

    def _hparams(self, hp: dict):
        if self.method == "KNE":
            from ..hparams import KNEHyperParams

            return KNEHyperParams.from_dict(hp)
        from ..fine import FiNEHyperParams

        return FiNEHyperParams.from_dict(hp)

    def _quality(self, request, hparams) -> dict:
        return compute_edit_quality(self.model, self.tok, request, max_length=hparams.max_length,
                                    test_generation=self.fluency)

    def _ensemble(self, hparams, items: DevItems):
        from ..cache import ScoreCache
        from ..localization import localize

        key = (items.dataset, tuple(hparams.target_modules), hparams.neuron_axis, tuple(hparams.layers),
               hparams.p, hparams.ig_steps, hparams.selection_scope, hparams.score_aggregation, len(items.loc_ids))
        if key not in self.ensembles:
            cache = ScoreCache(os.path.join(self.cache_dir, "scores"))
            ens = localize(self.model, self.tok, items.loc_requests, hparams, cache=cache, progress=self.progress)
            ens.metadata["item_ids"] = list(items.loc_ids)
            self.ensembles[key] = ens
        return self.ensembles[key]

    def _edit(self, request, hparams, mode: str, items: DevItems):
        if self.method == "FiNE":
            from ..fine import apply_fine_to_model

            return apply_fine_to_model(self.model, self.tok, [request], hparams, return_orig_weights=True)
        from ..kne_main import apply_kne_to_model

        ensemble = None
        if mode == "shared":
            if not items.loc_requests:
                raise ValueError("localization=shared needs localization_items > 0")
            ensemble = self._ensemble(hparams, items)
        else:
            hparams.cache_dir = os.path.join(self.cache_dir, "scores")
        return apply_kne_to_model(self.model, self.tok, [request], hparams, return_orig_weights=True,
                                  ensemble=ensemble)

    def _restore(self, weights_copy: dict) -> None:
        with torch.no_grad():
            for name, value in weights_copy.items():
                self.model.get_parameter(name).copy_(value)

    def evaluate(self, hp: dict, mode: str = "shared", report=None) -> dict:
        """{"summary": {dataset: KnowEdit summary}, "cases": [...], "seconds": ...}; `report(step, cases_by
        dataset)` is called after each item (for pruning; it may raise to stop)."""
        hparams = self._hparams(hp)
        if self.method == "KNE" and getattr(hparams, "nullspace", False) and not hparams.nullspace_cache_dir:
            hparams.nullspace_cache_dir = os.path.join(self.cache_dir, "nullspace")
        start = time.perf_counter()
        cases: dict[str, list] = {it.dataset: [] for it in self.items}
        records = []
        order = [(it, i) for i in range(max(len(it.ids) for it in self.items)) for it in self.items
                 if i < len(it.ids)]  # interleave datasets so early pruning sees all of them
        bar = tqdm(order, desc=f"{self.method} trial", unit="item", disable=not self.progress)
        for step, (items, i) in enumerate(bar):
            bar.set_postfix_str(items.ids[i], refresh=False)
            request, item_id = items.requests[i], items.ids[i]
            if item_id not in self.pre:
                self.pre[item_id] = self._quality(request, hparams)
            t0 = time.perf_counter()
            _, weights_copy = self._edit(request, hparams, mode, items)
            try:
                post = self._quality(request, hparams)
            finally:
                self._restore(weights_copy)
            case = finalize_locality_metrics({"pre": self.pre[item_id], "post": post}, request)
            cases[items.dataset].append(case)
            records.append({"item": item_id, "edit_s": round(time.perf_counter() - t0, 3),
                            "rewrite_acc": post["rewrite_acc"]})
            if report is not None:
                report(step, cases)
        summary = {d: summarize(c) for d, c in cases.items() if c}
        return {"summary": summary, "cases": records, "seconds": round(time.perf_counter() - start, 2)}
