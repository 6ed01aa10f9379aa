"""The generated results page (easyedit_kne.bench.docs_table, `compare --markdown`): from a tiny results tree
of summary.json + cases.jsonl files, CIs and N per cell, a flagged smaller cell, the common subset, the
paired comparison with KNE, the commands, versions and machine, the published numbers, the README block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easyedit_kne.bench import compare, docs_table

pytest.importorskip("scipy")


def _case(cid: int, rewrite: float, loc: float) -> dict:
    metrics = {"rewrite_acc": [rewrite], "portability": {"Reasoning_acc": [rewrite / 2]},
               "locality": {"Relation_Specificity_acc": [loc]}, "fluency": {"ngram_entropy": 5.0 + 0.01 * cid},
               "exact_match": {"rewrite": [rewrite]}}
    return {"case_id": cid, "pre": {"rewrite_acc": [0.0], "portability": {"Reasoning_acc": [0.0]}, "locality": {}},
            "post": metrics, "timing": {"localization_s": 0.0, "edit_s": 1.0, "eval_s": 1.0}}


def _write_run(folder: Path, method: str, dataset: str, cases: list[dict]) -> None:
    folder.mkdir(parents=True)
    summary = {"method": method, "model": "smollm2-135m", "data": {"type": dataset, "size": 100, "offset": 0,
               "path": "${knowedit_dir}/x.json"}, "edit_mode": "single", "batch_size": 1,
               "n_cases": len(cases), "n_expected": len(cases), "complete": True,
               "Edit Succ.": 100.0 * sum(c["post"]["rewrite_acc"][0] for c in cases) / len(cases),
               "Portability": 1.0, "Locality": 2.0, "Fluency": 500.0, "Exact Match": 3.0,
               "command": f"easyedit-kne knowedit method={method} data={dataset} data.size=100",
               "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
               "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1, "device": "cpu"}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "benchmarks" / "m" / "test"
    _write_run(root / "zsre" / "KNE", "KNE", "zsre", [_case(i, 1.0 if i % 4 else 0.0, 1.0) for i in range(8)])
    _write_run(root / "zsre" / "FT-L", "FT-L", "zsre", [_case(i, 0.0 if i % 2 else 1.0, 0.5) for i in range(8)])
    _write_run(root / "zsre" / "ROME", "ROME", "zsre", [_case(i, 1.0, 0.0) for i in range(3)])  # fewer items
    # a run written before summaries carried the method config's name: its summary says KNE, run_config KNE-paper
    _write_run(root / "zsre" / "KNE-paper", "KNE", "zsre", [_case(i, 1.0, 0.25) for i in range(8)])
    (root / "zsre" / "KNE-paper" / "run_config.json").write_text(
        json.dumps({"sha256": "y", "config": {"method": "KNE-paper"}}), encoding="utf-8")
    covariance = {"source": "KnowEdit WikiBio passages", "mom2_dataset": "local_x", "n_texts": 770}
    (root / "zsre" / "ROME" / "run_config.json").write_text(
        json.dumps({"sha256": "x", "config": {"method_extra": {"covariance_texts": covariance}}}), encoding="utf-8")
    return root


def test_page_has_cis_n_flag_common_subset_pairs_provenance_and_published(tree, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{docs_table.README_START}\nold numbers\n{docs_table.README_END}\nrest\n")
    page_path = tmp_path / "docs" / "page.md"
    assert compare.main([str(tree), "--markdown", str(page_path), "--readme", str(readme)]) == 0
    page = page_path.read_text(encoding="utf-8")
    assert "the protocol's test split (items [0, 100)" in page and "NOT the protocol" not in page
    all_items = page.split("## All items of each run")[1].split("## The common subset")[0]
    assert "| KNE | 8 | 75.0 [" in all_items and "| FT-L | 8 | 50.0 [" in all_items
    assert "| KNE-paper | 8 | 100.0 [" in all_items and "(zsre/KNE" not in page  # its config's name, no clash
    assert f"| ROME | 3 {docs_table.FEWER} | 100.0 [" in all_items  # flagged: 3 items next to 8
    assert f"{docs_table.FEWER} fewer items than the largest cell of this table (N = 8)" in all_items
    common = page.split("## The common subset")[1].split("## Paired with KNE")[0]
    assert "| KNE | 3 | 66.7 [" in common and docs_table.FEWER + " fewer" not in common  # items 0, 1, 2
    paired = page.split("## Paired with KNE")[1].split("## How these numbers")[0]
    assert "| FT-L | ZsRE | " in paired and "(n=3;" in paired and "| KNE-paper | ZsRE | " in paired
    assert "easyedit-kne knowedit method=ROME data=zsre data.size=100" in page
    assert "easyedit-kne knowedit sweep=table" in page
    assert "| python 3.11.7, torch 2.13.0+cpu | Test CPU, 2 cores" in page
    assert "- 770 texts from KnowEdit WikiBio passages: ROME / ZsRE" in page  # MEMIT/ROME statistics, stated
    assert "published numbers for another model" in page and "| ZsRE | KNE | 97.75 | 58.02 | 76.85 | 571.93 |" in page
    assert "| WikiData_counterfact | SERAC | 99.99 | 76.07 | 98.96 | 549.91 |" in page
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old numbers" not in text
    assert "| KNE | 75.0/37.5/100.0/503.5 (N=8) |" in text and f"(N=3 {docs_table.FEWER})" in text


def test_empty_tree_says_nothing_is_committed_and_missing_markers_are_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    page = docs_table.generate([str(tmp_path / "empty")], str(tmp_path / "p.md"))
    assert "No run is committed under" in page and "Published numbers for another model" in page
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="generated-table markers"):
        docs_table.generate([str(tmp_path / "empty")], str(tmp_path / "p.md"), str(readme))
