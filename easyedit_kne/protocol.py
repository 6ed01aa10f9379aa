"""The evaluation protocol: three disjoint item sets per KnowEdit dataset (docs/protocol.md).

* localization: items a shared knowledge neuronal ensemble is localized on. ZsRE and recent: the last
  `n` items of the same file (the file's tail); counterfact: train_cf.json from its start, at most 200.
* dev: every tuning run. ZsRE-test-all [200, 400), counterfact train_cf.json [1000, 1200),
  recent_train [200, 300).
* test: reported tables only. Items [0, 100) of ZsRE-test-all, test_cf.json and recent_train.json.

An item is identified by (file, index in the file). `split_requests` returns the requests of a split with
their ids; `check_tuning_items` refuses any test item (and any overlap between localization and dev items)
before a tuning run starts. Files live under `knowedit_dir()`: $KNOWEDIT_DIR, else ../shared/data/knowedit
beside the repository, else /work/shared/data/knowedit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DATASETS = ("zsre", "counterfact", "recent")
SPLITS = ("localization", "dev", "test")
LOCALIZATION_MAX = {"counterfact": 200}  # counterfact localizes on train_cf.json from its start


@dataclass(frozen=True)
class Slice:
    file: str  # path relative to knowedit_dir
    start: int  # first index; negative: counted from the end of the file (the tail)
    stop: int | None  # one past the last index (None: start + n where n is asked for)


PROTOCOL = {
    "zsre": {"localization": Slice("zsre/ZsRE-test-all.json", -200, None),
             "dev": Slice("zsre/ZsRE-test-all.json", 200, 400),
             "test": Slice("zsre/ZsRE-test-all.json", 0, 100)},
    "counterfact": {"localization": Slice("wiki_counterfact/train_cf.json", 0, 200),
                    "dev": Slice("wiki_counterfact/train_cf.json", 1000, 1200),
                    "test": Slice("wiki_counterfact/test_cf.json", 0, 100)},
    "recent": {"localization": Slice("wiki_recent/recent_train.json", -200, None),
               "dev": Slice("wiki_recent/recent_train.json", 200, 300),
               "test": Slice("wiki_recent/recent_train.json", 0, 100)},
}


def knowedit_dir() -> Path:
    env = os.environ.get("KNOWEDIT_DIR")
    if env:
        return Path(env).expanduser()
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowedit"
    return beside if beside.is_dir() else Path("/work/shared/data/knowedit")


def _check_dataset(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")


def _file_len(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return len(json.load(f))


def split_ids(dataset: str, split: str, n: int | None = None, root: str | os.PathLike | None = None
              ) -> tuple[str, list[int]]:
    """(file relative to root, item indices) of a split; `n` keeps the first n of them (localization: the
    last n of the file for a tail, the first n from the start for counterfact)."""
    _check_dataset(dataset, split)
    sl = PROTOCOL[dataset][split]
    root = Path(root) if root is not None else knowedit_dir()
    if sl.start < 0:  # the file's tail
        size = _file_len(root / sl.file)
        count = -sl.start if n is None else n
        if count > -sl.start:
            raise ValueError(f"{dataset} localization: at most {-sl.start} tail items, {count} asked")
        ids = list(range(size - count, size))
    else:
        ids = list(range(sl.start, sl.stop))
        if n is not None:
            if n > len(ids):
                raise ValueError(f"{dataset} {split}: the split has {len(ids)} items, {n} asked")
            ids = ids[:n]
    return sl.file, ids


def split_requests(dataset: str, split: str, n: int | None = None, root: str | os.PathLike | None = None
                   ) -> tuple[list[dict], list[str]]:
    """(requests, item ids "file#index") of a split, in file order."""
    from .knowedit import load_knowedit

    root = Path(root) if root is not None else knowedit_dir()
    rel, ids = split_ids(dataset, split, n, root)
    if not ids:
        return [], []
    data_type = {"zsre": "zsre", "counterfact": "counterfact", "recent": "recent"}[dataset]
    reqs = load_knowedit(root / rel, data_type=data_type, size=ids[-1] + 1 - ids[0], offset=ids[0])
    return reqs, [f"{rel}#{i}" for i in ids]


def item_set(dataset: str, split: str, root=None) -> set[str]:
    rel, ids = split_ids(dataset, split, None, root)
    return {f"{rel}#{i}" for i in ids}


def check_tuning_items(dataset: str, item_ids, localization_ids=(), root=None) -> None:
    """Refuse test items, and localization items that are also tuned on, before a tuning run starts."""
    item_ids, localization_ids = set(item_ids), set(localization_ids)
    test = item_set(dataset, "test", root)
    for name, ids in (("tuning", item_ids), ("localization", localization_ids)):
        bad = sorted(ids & test)
        if bad:
            raise ValueError(
                f"{dataset}: {len(bad)} {name} item(s) belong to the test split ({', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}); tune on the dev split only (docs/protocol.md)")
    overlap = sorted(item_ids & localization_ids)
    if overlap:
        raise ValueError(f"{dataset}: items {', '.join(overlap[:5])} are both localized on and tuned on; "
                         "the localization and dev splits must be disjoint")


def check_disjoint(dataset: str, root=None) -> None:
    """Raise if the protocol's three splits of `dataset` share an item in the files under `root`."""
    sets = {s: item_set(dataset, s, root) for s in SPLITS}
    for a, b in (("localization", "dev"), ("localization", "test"), ("dev", "test")):
        common = sets[a] & sets[b]
        if common:
            raise ValueError(f"{dataset}: the {a} and {b} splits share {len(common)} item(s), e.g. "
                             f"{sorted(common)[0]}")
