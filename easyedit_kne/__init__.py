"""easyedit-kne: KNE (Knowledge Neuronal Ensemble) knowledge editing, as an EasyEdit plugin.

Importing the package is light: torch is imported only when a submodule needs it, EasyEdit only
inside `register()`, and no model is loaded.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "KNEHyperParams": "easyedit_kne.hparams",
    "apply_kne_to_model": "easyedit_kne.kne_main",
    "EditStats": "easyedit_kne.kne_main",
    "localize": "easyedit_kne.localization",
    "attribute": "easyedit_kne.attribution",
    "KnowledgeNeuronalEnsemble": "easyedit_kne.ensemble",
    "ScoreCache": "easyedit_kne.cache",
    "register": "easyedit_kne.easyedit",
    "FiNEHyperParams": "easyedit_kne.fine",
    "apply_fine_to_model": "easyedit_kne.fine",
    "Edit": "easyedit_kne.edit_artifact",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'easyedit_kne' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
