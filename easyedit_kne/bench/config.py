"""Where the runner's Hydra configs live (package data) and the resolvers they use.

The configs ship in the wheel under easyedit_kne/bench/conf/. Defaults that point at files outside the package
(the KnowEdit folder, the speed report) depend on where the package runs from: in a clone of the repository
(the folder above the package holds setup.cfg and hparams/) they keep the repository's layout; in an installed
wheel they are relative to the current directory. The project never downloads KnowEdit: set `knowedit_dir=`
(or KNOWEDIT_DIR) to your copy of zjunlp/KnowEdit, or `data.path=` to one of its files.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CONF_DIR = Path(__file__).resolve().parent / "conf"


def repo_root() -> Path | None:
    """The repository checkout this package runs from, or None for an installed package."""
    root = PACKAGE_DIR.parent
    return root if (root / "setup.cfg").is_file() and (root / "hparams").is_dir() else None


def default_knowedit_dir() -> Path:
    """KnowEdit's folder when neither knowedit_dir nor KNOWEDIT_DIR is set: ../shared/data/knowedit next to a
    clone (this project's machines), else ./knowedit in the current directory."""
    root = repo_root()
    return root.parent / "shared" / "data" / "knowedit" if root is not None else Path("knowedit").resolve()


def _first_set(*values):
    return next((v for v in values if v is not None and str(v) not in ("None", "null", "")), None)


def register_resolvers() -> None:
    """OmegaConf resolvers of conf/: kne_knowedit_dir, kne_first (first set value), kne_basename."""
    from omegaconf import OmegaConf

    for name, fn in (("kne_knowedit_dir", lambda: str(default_knowedit_dir())), ("kne_first", _first_set),
                     ("kne_basename", lambda p: Path(str(p)).name)):
        OmegaConf.register_new_resolver(name, fn, replace=True)
