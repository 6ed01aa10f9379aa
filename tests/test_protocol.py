"""The dev/test/localization protocol: disjoint splits, item ids, refusal of test items (tiny synthetic files)."""

import json

import pytest

from easyedit_kne import protocol


def _write(root, rel, n):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"subject": f"S{i}", "prompt": f"The capital of S{i} is", "target_new": f"T{i}"} for i in range(n)]
    path.write_text(json.dumps(recs))


@pytest.fixture
def root(tmp_path):
    _write(tmp_path, "zsre/ZsRE-test-all.json", 700)
    _write(tmp_path, "wiki_counterfact/train_cf.json", 1300)
    _write(tmp_path, "wiki_counterfact/test_cf.json", 150)
    _write(tmp_path, "wiki_recent/recent_train.json", 570)
    return tmp_path


@pytest.mark.parametrize("dataset", protocol.DATASETS)
def test_splits_disjoint_and_sized(root, dataset):
    protocol.check_disjoint(dataset, root)
    sizes = {s: len(protocol.item_set(dataset, s, root)) for s in protocol.SPLITS}
    assert sizes["test"] == 100
    assert sizes["dev"] == {"zsre": 200, "counterfact": 200, "recent": 100}[dataset]
    assert sizes["localization"] == 200


def test_split_requests_ids(root):
    reqs, ids = protocol.split_requests("zsre", "dev", n=3, root=root)
    assert ids == [f"zsre/ZsRE-test-all.json#{i}" for i in (200, 201, 202)]
    assert [r["subject"] for r in reqs] == ["S200", "S201", "S202"]
    reqs, ids = protocol.split_requests("recent", "localization", n=2, root=root)
    assert ids == ["wiki_recent/recent_train.json#568", "wiki_recent/recent_train.json#569"]
    assert reqs[-1]["subject"] == "S569"
    _, ids = protocol.split_requests("counterfact", "localization", n=2, root=root)
    assert ids == ["wiki_counterfact/train_cf.json#0", "wiki_counterfact/train_cf.json#1"]


def test_refuses_test_items_and_overlap(root):
    _, dev = protocol.split_requests("zsre", "dev", n=5, root=root)
    _, loc = protocol.split_requests("zsre", "localization", n=5, root=root)
    protocol.check_tuning_items("zsre", dev, loc, root=root)
    with pytest.raises(ValueError, match="test split"):
        protocol.check_tuning_items("zsre", dev + ["zsre/ZsRE-test-all.json#7"], loc, root=root)
    with pytest.raises(ValueError, match="both localized on and tuned on"):
        protocol.check_tuning_items("zsre", dev, loc + dev[:1], root=root)
    with pytest.raises(ValueError, match="dataset="):
        protocol.split_ids("wikibio", "dev", root=root)


def test_overlapping_file_detected(tmp_path):
    _write(tmp_path, "zsre/ZsRE-test-all.json", 300)  # the tail [100, 300) overlaps dev and test
    with pytest.raises(ValueError, match="share"):
        protocol.check_disjoint("zsre", tmp_path)
