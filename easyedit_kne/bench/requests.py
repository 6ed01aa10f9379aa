"""The evaluated KnowEdit items of a run, and the held-out items KNE localizes on (disjoint from them)."""

from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("auto", "tail", "file", "edited")
# KnowEdit files a dataset localizes on by default (split auto), next to data.path.
LOCALIZATION_FILES = {"counterfact": "train_cf.json", "wikibio": "wikibio-train-all.json"}


def _resolve(path) -> Path:
    return Path(str(path)).expanduser().resolve()


def load_eval_requests(cfg) -> tuple[list[dict], list[int], int]:
    """(requests, case ids = their indices in the file, number of records in the file)."""
    from easyedit_kne.knowedit import load_knowedit

    path = _resolve(cfg.data.path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data.path={path} does not exist. KnowEdit is never downloaded here: get it from the Hugging Face "
            "dataset zjunlp/KnowEdit and set knowedit_dir=/your/KnowEdit (or KNOWEDIT_DIR) for the data= presets, "
            "or data.path=/your/file.json")
    size = None if cfg.data.size is None else int(cfg.data.size)
    offset = int(cfg.data.offset or 0)
    requests = load_knowedit(path, data_type=cfg.data.type, size=size, offset=offset)
    if not requests:
        raise ValueError(f"data: no record in {path} at offset {offset}")
    with open(path, encoding="utf-8") as f:
        n_file = len(json.load(f))
    return requests, list(range(offset, offset + len(requests))), n_file


def plan_localization(cfg, eval_requests: list[dict], case_ids: list[int], n_file: int):
    """(localization requests or None for per-edit localization, description) for KNE."""
    from easyedit_kne.knowedit import load_knowedit

    loc = cfg.localization
    split = str(loc.split)
    if split not in SPLITS:
        raise ValueError(f"localization.split={split!r}: choose one of {', '.join(SPLITS)}")
    own = cfg.method.get("localization_size")  # a method config may fix its own (KNE-paper: the authors' 200)
    size = int(loc.size or 0) if own is None else int(own)
    if size < 0:
        field = "localization.size" if own is None else f"method {cfg.method.name}'s localization_size"
        raise ValueError(f"{field}={size}: give 0 (on each edited batch) or a positive count")
    if size == 0 or split == "edited":
        return None, {"split": "edited", "size": 0, "source": "each edited batch (localized per edit call)"}
    data_path = _resolve(cfg.data.path)
    data_type = str(cfg.data.type)
    loc_type = str(loc.type or data_type)
    if split == "auto":
        sibling = LOCALIZATION_FILES.get(data_type)
        if sibling and (data_path.parent / sibling).is_file() and (data_path.parent / sibling) != data_path:
            split, loc_path = "file", data_path.parent / sibling
        else:
            split, loc_path = "tail", data_path
    elif split == "file":
        if not loc.path:
            raise ValueError("localization.split=file needs localization.path (a KnowEdit JSON)")
        loc_path = _resolve(loc.path)
        if loc_path == data_path:
            split = "tail"
    else:
        loc_path = data_path
    eval_prompts = {r["prompt"] for r in eval_requests}
    eval_ids = set(case_ids)
    if split == "tail":
        items = load_knowedit(loc_path, data_type=data_type)
        chosen, skipped = [], 0
        for i in range(len(items) - 1, -1, -1):
            if len(chosen) == size:
                break
            if i in eval_ids:
                raise ValueError(
                    f"localization: the held-out tail of {loc_path.name} would need item {i}, which is evaluated "
                    f"(items {min(case_ids)}..{max(case_ids)}); lower localization.size ({size}) or data.size, or "
                    "use localization.split=file with another file")
            if items[i]["prompt"] in eval_prompts:
                skipped += 1
                continue
            chosen.append(i)
        if len(chosen) < size:
            raise ValueError(f"localization: only {len(chosen)} held-out items in {loc_path.name}, {size} asked")
        chosen.sort()
        requests = [items[i] for i in chosen]
        desc = {"split": "tail", "path": str(loc_path), "indices": [chosen[0], chosen[-1] + 1],
                "skipped_same_prompt": skipped}
    else:
        items = load_knowedit(loc_path, data_type=loc_type)
        chosen = [i for i, r in enumerate(items) if r["prompt"] not in eval_prompts][:size]
        if len(chosen) < size:
            raise ValueError(f"localization: {loc_path} has {len(chosen)} items not evaluated, {size} asked")
        requests = [items[i] for i in chosen]
        desc = {"split": "file", "path": str(loc_path), "indices": [chosen[0], chosen[-1] + 1],
                "skipped_same_prompt": chosen[-1] + 1 - len(chosen)}
    # disjointness, asserted whatever the split: no evaluated item, no evaluated prompt
    if desc["split"] == "tail":
        assert not eval_ids & set(chosen), "localization items overlap the evaluated items"
    assert not eval_prompts & {r["prompt"] for r in requests}, "localization shares a prompt with an evaluated item"
    desc.update(size=len(requests), disjoint=True)
    return requests, desc
