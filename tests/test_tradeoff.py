"""The dev trade-off plot: every point on exactly the reference's items, the target region's rule, and the
refusals (a trial on other items, a run that has not finished the reference's items)."""

import json

import pytest

from easyedit_kne.tuning import tradeoff


def _case(cid, es, port, loc):
    post = {"rewrite_acc": [es / 100], "portability": {"Reasoning_acc": [port / 100]},
            "locality": {"Relation_Specificity_acc": [loc / 100]}}
    return {"case_id": cid, "pre": post, "post": post}


def _run(root, name, rows, data="zsre"):
    d = root / name
    d.mkdir(parents=True)
    (d / "cases.jsonl").write_text("".join(json.dumps(_case(*r)) + "\n" for r in rows), encoding="utf-8")
    (d / "summary.json").write_text(json.dumps({"data": {"type": data}}), encoding="utf-8")
    return str(d)


def _study(root, ids, table):
    d = root / "study"
    d.mkdir()
    trial = {"number": 3, "state": "COMPLETE", "dev_items": {"zsre": [f"zsre/ZsRE-test-all.json#{i}" for i in ids]},
             "table": {"zsre": table}}
    pruned = {**trial, "number": 4, "state": "PRUNED"}
    (d / "trials.jsonl").write_text(json.dumps(trial) + "\n" + json.dumps(pruned) + "\n", encoding="utf-8")
    return str(d)


def test_points_use_only_the_reference_items(tmp_path):
    ref = _run(tmp_path, "FT-M", [(200, 100, 40, 90), (201, 100, 60, 90)])
    # an extra item (202) with extreme values must not move the means
    kne = _run(tmp_path, "KNE", [(200, 100, 30, 95), (201, 100, 40, 95), (202, 0, 0, 0)])
    short = _run(tmp_path, "KNE-short", [(200, 100, 90, 99)])
    study = _study(tmp_path, [200, 201], {"Edit_Succ": 100.0, "Portability": 49.0, "Locality": 91.0})
    panels = tradeoff.collect([ref], [study], [kne, short])
    panel = panels["zsre"]
    assert panel["reference"]["Portability"] == pytest.approx(50.0)
    points = {p["label"]: p for p in panel["points"]}
    assert set(points) == {"study#3", "KNE"}  # the pruned trial is left out, the short run skipped
    assert points["KNE"]["Portability"] == pytest.approx(35.0) and points["KNE"]["Edit Succ."] == 100.0
    assert any("KNE-short" in s for s in panel["skipped"])
    # Portability 49 >= 50 - 2 and Locality 91 >= 90: inside; KNE's Portability 35 is not
    assert tradeoff.in_target(points["study#3"], panel["reference"])
    assert not tradeoff.in_target(points["KNE"], panel["reference"])
    assert "| zsre | KNE | 100.0 | 35.0 | 95.0 | -15.0 | +5.0 | no |" in tradeoff.table(panels)


def test_trial_on_other_items_is_skipped_and_edit_succ_gate(tmp_path):
    ref = _run(tmp_path, "FT-M", [(200, 100, 40, 90), (201, 100, 60, 90)])
    study = _study(tmp_path, [200, 205], {"Edit_Succ": 100.0, "Portability": 60.0, "Locality": 99.0})
    panel = tradeoff.collect([ref], [study], [])["zsre"]
    assert panel["points"] == [] and "other items" in panel["skipped"][0]
    low_es = {"Edit Succ.": 98.0, "Portability": 90.0, "Locality": 99.0}
    assert not tradeoff.in_target(low_es, panel["reference"])


def test_cli_writes_the_plot_and_refuses_a_dataset_without_reference(tmp_path, capsys):
    ref = _run(tmp_path, "FT-M", [(200, 100, 40, 90)])
    kne = _run(tmp_path, "KNE", [(200, 100, 30, 95)])
    out = tmp_path / "plot.png"
    assert tradeoff.main(["--reference", ref, "--run", kne, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and "wrote" in capsys.readouterr().out
    cf = _run(tmp_path, "KNE-cf", [(1000, 100, 30, 95)], data="counterfact")
    with pytest.raises(SystemExit, match="no --reference"):
        tradeoff.main(["--reference", ref, "--run", cf, "--out", str(out)])
