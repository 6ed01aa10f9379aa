"""Plug KNE (and FiNE, when present) into a real EasyEdit (github.com/zjunlp/EasyEdit), without editing it.

    from easyedit_kne.easyedit import register
    from easyedit_kne.hparams import KNEHyperParams
    register()                      # -> ["KNE", "FiNE", "FINE"] (FiNE/FINE only if easyedit_kne.fine imports)
    from easyeditor import BaseEditor
    editor = BaseEditor.from_hparams(KNEHyperParams.from_hparams("path/to/kne.yaml"))
    metrics, edited_model, _ = editor.edit(prompts=..., target_new=...)      # batch_size 1
    metrics, edited_model, _ = editor.batch_edit(prompts=..., target_new=...)  # any batch_size

On a machine without CUDA set `device: cpu` (or null): EasyEdit turns an integer device into `cuda:N`.

EasyEdit is not a dependency of this package: `register()` imports it lazily. Set the environment variable
`EASYEDIT_PATH` to an EasyEdit checkout (`git clone https://github.com/zjunlp/EasyEdit`) or `pip install -e`
that checkout; `scripts/setup_easyedit_env.sh` builds a virtual environment with both.

What `register()` changes in the imported EasyEdit (all in memory, all idempotent):

* `easyeditor.util.alg_dict.ALG_DICT` (the dict `BaseEditor.__init__` looks `hparams.alg_name` up in) gets
  the entries "KNE" -> `easyedit_kne.kne_main.apply_kne_to_model` (and "FiNE" ->
  `easyedit_kne.fine.apply_fine_to_model`). The dict is mutated in place, so every module that star-imported
  it (`editors/editor.py`, `editors/safety_editor.py`, `editors/concept_editor.py`, the `easyeditor`
  package itself) sees the entries; any `easyeditor.*` module that holds a *different* dict named
  `ALG_DICT` is updated as well.
* `BatchEditor.is_batchable_method` (`editors/batch_editor.py`), which `BaseEditor.batch_edit` asserts on,
  answers True for "KNE". See `_patch_batch_editor` for why the static method is wrapped rather than the
  Enum extended.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

__all__ = ["register", "BATCHABLE_METHODS", "CLONE_URL"]

CLONE_URL = "https://github.com/zjunlp/EasyEdit"
# Methods that edit a list of requests at once, hence may go through `BaseEditor.batch_edit`.
BATCHABLE_METHODS = ("KNE", "FiNE", "FINE")
# Marker on our wrapper of `BatchEditor.is_batchable_method`: the set of names it adds.
_EXTRA_ATTR = "_easyedit_kne_batchable"


def _add_easyedit_path() -> str | None:
    """Put `$EASYEDIT_PATH` (an EasyEdit checkout: the folder holding `easyeditor/`) first on sys.path."""
    path = os.environ.get("EASYEDIT_PATH", "").strip()
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    return path


def _import_easyedit():
    """Import EasyEdit's registry and BatchEditor, or raise an ImportError that says how to get EasyEdit."""
    path = _add_easyedit_path()
    try:
        alg_dict_mod = importlib.import_module("easyeditor.util.alg_dict")
        batch_mod = importlib.import_module("easyeditor.editors.batch_editor")
    except ImportError as e:
        missing = getattr(e, "name", None)
        where = f"EASYEDIT_PATH={path!r}" if path else "EASYEDIT_PATH is not set"
        if missing == "easyeditor" or (missing or "").startswith("easyeditor."):
            raise ImportError(
                f"EasyEdit (the `easyeditor` package) is not importable ({where}). Get it with\n"
                f"    git clone {CLONE_URL}\n"
                "and either set EASYEDIT_PATH to that checkout (the folder that contains `easyeditor/`) or "
                "`pip install -e` it; scripts/setup_easyedit_env.sh builds a working environment."
            ) from e
        raise ImportError(
            f"EasyEdit was found ({where}) but importing it failed: {e}. Install EasyEdit's requirements "
            "(its requirements.txt; scripts/setup_easyedit_env.sh shows a set that works)."
        ) from e
    return alg_dict_mod, batch_mod.BatchEditor


def _our_methods() -> dict:
    """name -> apply function. KNE is required; FiNE is added only when `easyedit_kne.fine` imports."""
    from easyedit_kne.kne_main import apply_kne_to_model

    methods = {"KNE": apply_kne_to_model}
    try:
        fine = importlib.import_module("easyedit_kne.fine")
    except ModuleNotFoundError as e:
        if e.name not in ("easyedit_kne.fine",):
            warnings.warn(f"FiNE not registered: importing easyedit_kne.fine failed: {e}", stacklevel=3)
        return methods
    except ImportError as e:
        warnings.warn(f"FiNE not registered: importing easyedit_kne.fine failed: {e}", stacklevel=3)
        return methods
    apply_fine = getattr(fine, "apply_fine_to_model", None)
    if apply_fine is not None:
        methods["FiNE"] = methods["FINE"] = apply_fine  # FINE: the authors' alg_name (their YAMLs)
    return methods


def _update_alg_dicts(alg_dict_mod, methods: dict) -> None:
    canonical = alg_dict_mod.ALG_DICT
    canonical.update(methods)  # in place: every star-import of alg_dict shares this very object
    seen = {id(canonical)}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "easyeditor" or name.startswith("easyeditor.")):
            continue
        other = getattr(mod, "ALG_DICT", None)
        if isinstance(other, dict) and id(other) not in seen:
            seen.add(id(other))
            other.update(methods)


def _patch_batch_editor(batch_editor_cls, names) -> None:
    """Make `BatchEditor.is_batchable_method(name)` true for `names`.

    `BatchEditor` is an Enum whose static method compares `alg_name` against a fixed list of members, so
    adding an Enum member (which needs private `_member_map_`/`_value2member_map_` surgery) would not change
    its answer. Instead the static method is replaced by a wrapper that answers True for our names and
    defers to the original otherwise. Setting a non-member attribute on an Enum class is allowed, the
    original behaviour is kept for every other method, and the wrapper carries the set of added names (and
    `__wrapped__`), so calling this again only adds names instead of wrapping twice.
    """
    current = batch_editor_cls.__dict__.get("is_batchable_method")
    func = current.__func__ if isinstance(current, staticmethod) else current
    extra = getattr(func, _EXTRA_ATTR, None)
    if extra is None:
        original = func
        extra = set()

        def is_batchable_method(alg_name: str):
            return alg_name in extra or bool(original(alg_name))

        is_batchable_method.__wrapped__ = original
        is_batchable_method.__doc__ = "EasyEdit's check, extended by easyedit_kne.easyedit.register()."
        setattr(is_batchable_method, _EXTRA_ATTR, extra)
        batch_editor_cls.is_batchable_method = staticmethod(is_batchable_method)
    extra.update(names)


def register() -> list[str]:
    """Register KNE (and FiNE, if available) with EasyEdit; return the names now in its ALG_DICT.

    Safe to call any number of times. Raises ImportError, saying how to get EasyEdit, when `easyeditor`
    cannot be imported (set EASYEDIT_PATH to a checkout of https://github.com/zjunlp/EasyEdit).
    """
    alg_dict_mod, batch_editor_cls = _import_easyedit()
    methods = _our_methods()
    _update_alg_dicts(alg_dict_mod, methods)
    _patch_batch_editor(batch_editor_cls, [n for n in methods if n in BATCHABLE_METHODS])
    return list(methods)
