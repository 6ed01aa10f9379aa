"""The runner's method factory: `method.kind` (kne, fine, adalora, easyedit) -> an EditMethod."""

from __future__ import annotations

from . import adalora, covariance, easyedit_methods
from .method_base import EditMethod
from .ours import FiNEMethod, KNEMethod, _our_hparams, _plain
from .requests import plan_localization


def build_method(cfg, model, tok, model_path: str, eval_requests, case_ids, n_file) -> EditMethod:
    kind = str(cfg.method.kind)
    batch_size = 1 if cfg.edit_mode == "single" else int(cfg.batch_size)
    device = str(cfg.device)
    if kind == "kne":
        from easyedit_kne.hparams import KNEHyperParams

        loc_requests, loc_desc = plan_localization(cfg, eval_requests, case_ids, n_file)
        hparams, source = _our_hparams(KNEHyperParams, "KNE", cfg, model_path, dict(
            device=device, batch_size=batch_size, localization_size=0, localization_data=None,
            localization_data_type=None, ensemble_path=None))
        return KNEMethod(hparams, source, loc_requests, loc_desc)
    if kind == "fine":
        from easyedit_kne.fine import FiNEHyperParams

        hparams, source = _our_hparams(FiNEHyperParams, "FiNE", cfg, model_path,
                                       dict(device=device, batch_size=batch_size))
        return FiNEMethod(hparams, source)
    method_cfg = _plain(cfg.method)
    easyedit_path = cfg.easyedit.get("path")
    if kind == "adalora":
        return adalora.build_adalora_method(
            method_cfg, model_path=model_path, depth=easyedit_methods.model_depth(model), device=device,
            batch_size=batch_size, easyedit_path=easyedit_path, closest=cfg.model.get("easyedit_closest"))
    if kind == "easyedit":
        return easyedit_methods.build_easyedit_method(
            method_cfg, model=model, model_path=model_path, device=device, batch_size=batch_size,
            easyedit_path=easyedit_path, closest=str(cfg.model.easyedit_closest),
            stats_dir=str(cfg.easyedit.stats_dir),
            covariance=lambda: covariance.covariance_plan(cfg.easyedit.get("mom2_text_file"), cfg.get("knowedit_dir"),
                                                         int(cfg.easyedit.mom2_n_samples)))
    raise ValueError(f"method.kind={kind!r}: one of kne, fine, adalora, easyedit")
