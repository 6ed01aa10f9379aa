"""The claims sweeps' guard: every run of `sweep=p|loc_size|target_module|batch|sequential` edits items of the
protocol's DEV split only (docs/protocol.md) and says how many.

The sweep configs (easyedit_kne/bench/conf/sweep/) set `data.offset` to the dev split's start and name this
guard as a Hydra callback. Before the multirun starts, and again before each job, it checks that the evaluated
items [data.offset, data.offset + data.size) of data.path lie inside the dev split of data.type, and stops the
command otherwise, naming the items and the override that fixes it.

Why SystemExit: Hydra turns an ordinary exception raised in a callback into a warning and carries on, which
would let a test-split run through; SystemExit (a BaseException) is not caught there and ends the command with
the message on stderr, before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from easyedit_kne.protocol import PROTOCOL

# data.type -> the protocol's dataset (wikibio has no dev split in the protocol)
DATASET_OF = {"zsre": "zsre", "counterfact": "counterfact", "recent": "recent"}


class DevSplitRefused(SystemExit):
    """A claims sweep asked for items outside the protocol's dev split."""


def dev_items(data_type: str, data_path: str, offset: int, size: int | None) -> tuple[str, list[int]]:
    """(file relative to the KnowEdit folder, evaluated item indices) if they all lie in the dev split of
    data_type; raises DevSplitRefused otherwise."""
    dataset = DATASET_OF.get(str(data_type))
    if dataset is None:
        raise DevSplitRefused(f"data.type={data_type!r}: the claims sweeps run on the protocol's dev split, which "
                              f"exists for {', '.join(DATASET_OF)} only (docs/protocol.md)")
    dev, test = PROTOCOL[dataset]["dev"], PROTOCOL[dataset]["test"]
    path = Path(str(data_path)).as_posix()
    offset = int(offset or 0)
    if size is None:
        raise DevSplitRefused(f"data.size=null would evaluate the whole file; give data.size=N with "
                              f"N <= {dev.stop - dev.start} (the dev split of {dataset})")
    size = int(size)
    ids = list(range(offset, offset + size))
    if not path.endswith(dev.file):
        hint = f"data.path=${{knowedit_dir}}/{dev.file} data.offset={dev.start}"
        where = "the TEST file" if path.endswith(test.file) and test.file != dev.file else "not the dev file"
        raise DevSplitRefused(f"data.path={data_path} is {where} of {dataset}; the claims sweeps edit dev items "
                              f"{dev.file}[{dev.start}, {dev.stop}) only: set {hint}")
    bad = [i for i in ids if not dev.start <= i < dev.stop]
    if size < 1 or bad:
        in_test = [i for i in bad if test.file == dev.file and test.start <= i < test.stop]
        what = f"{len(in_test)} of them TEST items" if in_test else "outside the dev split"
        raise DevSplitRefused(
            f"data.offset={offset} data.size={size}: items [{offset}, {offset + size}) of {dev.file} are not all "
            f"dev items ({what}); the dev split is [{dev.start}, {dev.stop}): use data.offset={dev.start} and "
            f"data.size<={dev.stop - dev.start}")
    return dev.file, ids


def check_config(cfg) -> str:
    """Check a composed run config (data.*); returns the one-line statement of what is evaluated."""
    from omegaconf import OmegaConf

    data = cfg.data
    path = OmegaConf.select(cfg, "data.path", throw_on_missing=True)
    rel, ids = dev_items(data.type, path, data.offset, data.size)
    loc = OmegaConf.select(cfg, "localization.path", default=None)
    if loc and any(str(loc).endswith(PROTOCOL[d]["test"].file) for d in DATASET_OF
                   if PROTOCOL[d]["test"].file != PROTOCOL[d]["dev"].file):
        raise DevSplitRefused(f"localization.path={loc} is a test file; localize on the protocol's "
                              "localization split (localization.split=auto)")
    return f"dev split: {rel} items [{ids[0]}, {ids[-1] + 1}), N = {len(ids)}"


class DevSplitGuard(Callback):
    """Hydra callback (hydra.callbacks.dev_split._target_=easyedit_kne.bench.dev_split.DevSplitGuard)."""

    def __init__(self, announce: bool = True):
        self.announce = announce

    def _check(self, config) -> None:
        line = check_config(config)
        if self.announce:
            print(f"[claims] {line}", flush=True)

    def on_run_start(self, config, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._check(config)

    def on_job_start(self, config, **kwargs: Any) -> None:
        self._check(config)
