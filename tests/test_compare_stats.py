"""compare's statistics: bootstrap CIs per metric and paired differences against KNE, from a tiny results tree."""

from __future__ import annotations

import json

import numpy as np

from easyedit_kne.bench import compare
from easyedit_kne.stats import bootstrap_ci, format_ci, paired_difference


def case(cid: int, rewrite: float, loc: float) -> dict:
    pre = {"rewrite_acc": [0.0], "locality": {"R_output": [[1, 2]]}, "portability": {"r_acc": [0.0]},
           "fluency": {"ngram_entropy": 5.0}}
    post = {"rewrite_acc": [rewrite], "locality": {"R_output": [[1, 2]], "R_acc": [loc]},
            "portability": {"r_acc": [rewrite / 2]}, "fluency": {"ngram_entropy": 5.0 + rewrite}}
    return {"case_id": cid, "pre": pre, "post": post,
            "timing": {"localization_s": 0.0, "edit_s": 1.0, "eval_s": 1.0}}


def make_tree(root, n: int = 20, datasets=("zsre", "counterfact")) -> dict:
    """KNE (edits better) and FT-L runs per dataset, n cases each; returns {(method, dataset): [rewrite]}."""
    rng = np.random.default_rng(0)
    truth = {}
    for dataset in datasets:
        for method, shift in (("KNE", 0.3), ("FT-L", 0.0)):
            rewrites = np.clip(rng.uniform(0.2, 0.7, n) + shift, 0, 1).round(3).tolist()
            locs = rng.uniform(0.5, 1.0, n).round(3).tolist()
            folder = root / dataset / method
            folder.mkdir(parents=True)
            cases = [case(200 + i, r, lo) for i, (r, lo) in enumerate(zip(rewrites, locs, strict=True))]
            (folder / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
            summary = {"method": method, "model": "tiny", "data": {"type": dataset, "path": f"/d/{dataset}.json"},
                       "edit_mode": "single", "batch_size": 1, "n_cases": n, "n_expected": n, "complete": True,
                       "Edit Succ.": 100 * float(np.mean(rewrites)), "Portability": 0.0, "Locality": 0.0,
                       "Fluency": 0.0, "timings": {"localization_s": 0.0, "edit_s": 1.0, "evaluation_s": 1.0}}
            (folder / "summary.json").write_text(json.dumps(summary))
            truth[(method, dataset)] = rewrites
    return truth


def test_compare_reports_cis_and_paired_differences(tmp_path, capsys):
    truth = make_tree(tmp_path / "runs")
    assert compare.main([str(tmp_path / "runs"), "--out-prefix", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    kne = [100 * v for v in truth[("KNE", "zsre")]]
    ftl = [100 * v for v in truth[("FT-L", "zsre")]]
    ci = format_ci(bootstrap_ci(kne))
    assert f"| KNE | ZsRE | 20 | {ci} |" in text
    diff = paired_difference(dict(enumerate(ftl)), dict(enumerate(kne)))
    assert diff["verdict"] == "a < b"
    assert f"| FT-L | ZsRE | {format_ci(diff)} (n=20; lower) |" in text
    assert "Paired with KNE" in text and text.count("| FT-L | WikiData_counterfact |") == 3  # timings, CIs, paired
    assert (tmp_path / "cmp.md").read_text() == text


def test_compare_common_cis_use_the_common_items(tmp_path, capsys):
    truth = make_tree(tmp_path / "runs", datasets=("zsre",))
    lines = (tmp_path / "runs/zsre/FT-L/cases.jsonl").read_text().splitlines()
    (tmp_path / "runs/zsre/FT-L/cases.jsonl").write_text("\n".join(lines[:12]) + "\n")  # FT-L finished 12
    assert compare.main([str(tmp_path / "runs"), "--common", "--out-prefix", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    kne12 = [100 * v for v in truth[("KNE", "zsre")][:12]]
    assert f"| KNE | ZsRE | 12 | {format_ci(bootstrap_ci(kne12))} |" in text
    assert "(n=12;" in text


def test_no_stats_flag_and_runs_without_cases(tmp_path, capsys):
    make_tree(tmp_path / "runs", n=4, datasets=("zsre",))
    assert compare.main([str(tmp_path / "runs"), "--no-stats", "--out-prefix", str(tmp_path / "a")]) == 0
    assert "bootstrap" not in capsys.readouterr().out
    for f in (tmp_path / "runs").rglob("cases.jsonl"):
        f.unlink()
    assert compare.main([str(tmp_path / "runs"), "--out-prefix", str(tmp_path / "b")]) == 0
    assert "bootstrap" not in capsys.readouterr().out


def test_compare_draws_bars_with_cis_and_scatters(tmp_path, capsys):
    import pytest

    pytest.importorskip("matplotlib")
    make_tree(tmp_path / "runs", n=6)
    prefix = tmp_path / "fig" / "t"
    assert compare.main([str(tmp_path / "runs"), "--out-prefix", str(prefix)]) == 0
    names = sorted(p.name for p in prefix.parent.glob("*.png"))
    assert names == ["t-bars-counterfact.png", "t-bars-zsre.png", "t-scatter-FT-L.png", "t-scatter-KNE.png",
                     "t.png"]
    for p in prefix.parent.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
