"""Sequential editing evaluated at several T from one edit stream (`checkpoints=[1,10,50]`, edit_mode=sequential).

A sequential run of size N edits items [0, N) one chunk after another without roll back and evaluates all N at
the end. The model after its first T edits is exactly the model a run of size T ends with (the same items, in the
same order, from the same start), so a run with checkpoints also evaluates items [0, T) at each checkpoint T and
writes them where a run of size T would have written them: `checkpoint_dir` (default `../T={T}`, beside the run's
own folder, the sequential sweep's layout). Each checkpoint folder gets the run_config.json of the size-T run, so
a finished checkpoint is what `data.size=T` would resume (nothing is left to do) and a checkpoint folder that holds
another config is refused before any edit. One stream of N edits then replaces sum(T) + N edits.

The stream saves its edited weights (sequential_state.safetensors) before each checkpoint's evaluation, so a run
killed after a checkpoint resumes from there, not from the first edit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .case_log import RESULT_FILES


@dataclass
class Checkpoint:
    """Checkpoint T of a sequential run: its folder, its runner (log, summary) and its run-config hash."""

    n_items: int
    out: Path
    runner: object
    digest: str

    def pending(self, case_ids: list[int]) -> list[int]:
        return [cid for cid in case_ids[:self.n_items] if cid not in self.runner.log.records]


def checkpoint_sizes(cfg, n_items: int | None, chunk_size: int) -> list[int]:
    """The validated, sorted checkpoint sizes of `cfg.checkpoints` (empty: none); `n_items` is data.size (None:
    the whole file, checked against the items found by plan_checkpoints)."""
    raw = cfg.get("checkpoints")
    if raw in (None, "", []):
        return []
    values = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw
    if not isinstance(values, (list, tuple)):
        values = [values]
    if cfg.edit_mode != "sequential":
        raise ValueError(f"checkpoints={list(values)}: checkpoints evaluate a sequential edit stream part-way; "
                         "set edit_mode=sequential, or drop checkpoints")
    sizes = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"checkpoints: {v!r} is not a number of items >= 1 (e.g. checkpoints=[1,10,50])")
        if n_items is not None and v >= n_items:
            raise ValueError(f"checkpoints: {v} is not below the run's {n_items} items (the run itself evaluates "
                             f"all {n_items}); give sizes below data.size")
        if v % chunk_size:
            raise ValueError(f"checkpoints: {v} is not a multiple of batch_size={chunk_size} (a checkpoint falls "
                             "between two edit calls)")
        sizes.append(v)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"checkpoints={sizes}: a size is given twice")
    template = str(cfg.get("checkpoint_dir") or "")
    if "{T}" not in template:
        raise ValueError(f"checkpoint_dir={template!r}: it must contain {{T}} (one folder per checkpoint), "
                         "e.g. ../T={T}")
    return sorted(sizes)


def checkpoint_dir(cfg, out: Path, n_items: int) -> Path:
    path = Path(str(cfg.checkpoint_dir).replace("{T}", str(n_items)))
    return (path if path.is_absolute() else out / path).resolve()


def sized_config(cfg, n_items: int):
    """`cfg` as a run of the first `n_items` items would have it (data.size = n_items, no checkpoints)."""
    sized = copy.deepcopy(cfg)
    OmegaConf.set_struct(sized, False)
    sized.data.size = n_items
    sized.checkpoints = []
    return sized


def plan_checkpoints(cfg, out: Path, sizes: list[int], case_ids: list[int], context: dict, *, fingerprint_of,
                     check_config, defaults: dict | None, runner_cls) -> list[Checkpoint]:
    """One Checkpoint per size: its folder's run_config.json written (or checked: another config is refused
    here, before any edit), its finished cases loaded, its summary context that of a size-T run."""
    from . import portable

    plan = []
    for n_items in sizes:
        if n_items >= len(case_ids):
            raise ValueError(f"checkpoints: {n_items} is not below the run's {len(case_ids)} items")
        ck_out = checkpoint_dir(cfg, out, n_items)
        if ck_out == out.resolve():
            raise ValueError(f"checkpoint_dir={cfg.checkpoint_dir!r} puts checkpoint {n_items} into the run's own "
                             "folder; give a folder per T, e.g. ../T={T}")
        sized = sized_config(cfg, n_items)
        ck_out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:
            for name in RESULT_FILES:
                (ck_out / name).unlink(missing_ok=True)
        fingerprint = fingerprint_of(sized, ck_out)
        digest = check_config(ck_out, fingerprint, defaults)
        runner = runner_cls(sized, ck_out)
        runner.stop_after = None  # stop_after counts the run's own cases
        runner.log.load()
        runner.context = {**context, "case_ids": case_ids[:n_items],
                          "data": {**context["data"], "size": n_items}, "run_config_sha256": digest,
                          "output_dir": portable.display_dir(ck_out),
                          "checkpoint_of": {"output_dir": portable.display_dir(out), "size": len(case_ids)}}
        plan.append(Checkpoint(n_items, ck_out, runner, digest))
    return plan


__all__ = ["Checkpoint", "checkpoint_dir", "checkpoint_sizes", "plan_checkpoints", "sized_config"]
