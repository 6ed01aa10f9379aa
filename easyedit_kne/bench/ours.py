"""Our methods in the runner: KNE (one ensemble localized per run, reused by every edit) and FiNE; their hparams
come from hparams/<KNE|FiNE>/<model.hparams_name>.yaml (shipped in the wheel) or method.hparams_file."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from . import method_base
from .case_log import ENSEMBLE
from .requests import _resolve

LOCALIZATION_CACHE = "localization_cache"  # in the run folder while a shared ensemble is localized (not committed)


# --------------------------------------------------------------------------------------------- methods
def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


class KNEMethod(method_base.WeightsCopyMethod):
    """KNE through `apply_kne_to_model`, with the run's ensemble (localized once) passed to every edit."""

    def __init__(self, hparams, source, loc_requests, loc_desc):
        super().__init__("KNE", hparams, source)
        from easyedit_kne.kne_main import apply_kne_to_model

        self.apply_fn = apply_kne_to_model
        self.loc_requests = loc_requests
        self.loc_desc = loc_desc
        self.ensemble = None
        self.loc_info: dict = {}

    def fingerprint_extra(self) -> dict:
        items = [[r["prompt"], r["target_new"]] for r in self.loc_requests or []]
        digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
        return {"localization": {**self.loc_desc, "items_sha256": digest}}

    def prepare(self, model, tok, *, out_dir, progress=True) -> dict:
        from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble
        from easyedit_kne.localization import localize

        if self.loc_requests is None:
            self.loc_info = {**self.loc_desc, "seconds": 0.0, "reused": False}
            return {"localization": self.loc_info}
        path = Path(out_dir) / ENSEMBLE
        items = [{"prompt": r["prompt"], "target_new": r["target_new"]} for r in self.loc_requests]
        if path.is_file():
            ensemble = KnowledgeNeuronalEnsemble.load(path)
            if ensemble.metadata.get("items") != items:
                raise ValueError(f"{path} was localized on other items; delete it (or use overwrite=true)")
            reused, seconds = True, float(ensemble.metadata.get("seconds", 0.0))
        else:
            start = time.perf_counter()
            ensemble = localize(model, tok, self.loc_requests, self.hparams, cache=self._resume_cache(out_dir),
                                progress=progress)
            seconds = time.perf_counter() - start
            ensemble.metadata["seconds"] = round(seconds, 3)
            ensemble.save(path)
            reused = False
            if not self.hparams.cache_dir:  # the ensemble holds what the run needs; drop the per-request scores
                shutil.rmtree(Path(out_dir) / LOCALIZATION_CACHE, ignore_errors=True)
        ensemble.check_model(model)
        if ensemble.num_neurons == 0:
            raise ValueError("KNE: the ensemble selected no neuron; raise p or check the localization items")
        self.ensemble = ensemble
        self.loc_info = {**self.loc_desc, "seconds": round(seconds, 3), "reused": reused, "ensemble": str(path),
                         "num_neurons": ensemble.num_neurons,
                         "parameter_fraction": ensemble.parameter_fraction,
                         "modules": len(ensemble.neurons)}
        return {"localization": self.loc_info}

    def _resume_cache(self, out_dir):
        """Per-request attribution scores under the run folder while it localizes, so an interrupted localization
        (200 items take about an hour on a CPU) resumes where it stopped. None when hparams.cache_dir is set:
        localize then uses (and keeps) that cache. Not part of the run's fingerprint."""
        if self.hparams.cache_dir:
            return None
        from easyedit_kne.cache import ScoreCache

        return ScoreCache(str(Path(out_dir) / LOCALIZATION_CACHE))

    def apply_kwargs(self) -> dict:
        from easyedit_kne.kne_main import EditStats

        return {"ensemble": self.ensemble, "stats": EditStats(), "progress": False}

    def edit_info(self, kwargs) -> dict:
        s = kwargs["stats"]
        return {"localize_seconds": s.localize_seconds, "train_seconds": s.train_seconds, "steps": s.steps,
                "final_loss": s.losses[-1] if s.losses else None, "num_neurons": s.num_neurons}

    def summary_info(self) -> dict:
        return {"localization": self.loc_info}


class FiNEMethod(method_base.WeightsCopyMethod):
    """FiNE through `apply_fine_to_model` (it localizes per edit)."""

    def __init__(self, hparams, source):
        super().__init__("FiNE", hparams, source)
        from easyedit_kne.fine import apply_fine_to_model

        self.apply_fn = apply_fine_to_model

    def apply_kwargs(self) -> dict:
        from easyedit_kne.fine import FiNEStats

        return {"stats": FiNEStats(), "progress": False}

    def edit_info(self, kwargs) -> dict:
        s = kwargs["stats"]
        return {"localize_seconds": s.localize_seconds, "train_seconds": s.train_seconds, "steps": s.steps,
                "num_neurons": s.num_neurons, "early_stopped": s.early_stopped}


def hparams_file(folder: str, name: str) -> Path:
    """hparams/<folder>/<name>.yaml as shipped (the repository's top-level folder, or the wheel's copy)."""
    from easyedit_kne.hparams import hparams_root

    return Path(hparams_root()) / folder / f"{name}.yaml"


def _our_hparams(cls, folder: str, cfg, model_path: str, runner_fields: dict):
    """hparams/<folder>/<model.hparams_name>.yaml (or method.hparams_file) + method.hparams + runner fields."""
    import yaml

    file = cfg.method.get("hparams_file")
    name = cfg.model.get("hparams_name")
    path = _resolve(file) if file else (hparams_file(folder, name) if name else None)
    config, source = {}, f"{cls.__name__} defaults"
    if path is not None:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
            source = str(path)
        elif file:
            raise FileNotFoundError(f"method.hparams_file={file!r} does not exist")
        else:
            source = f"{cls.__name__} defaults ({path} not found)"
            warnings.warn(f"{path} not found: using {cls.__name__} defaults (plus method.hparams)", stacklevel=2)
    config = method_base.apply_overrides(config, _plain(cfg.method.get("hparams")))
    config.update(runner_fields, model_name=model_path)
    return cls.from_dict(config, source=source), source
