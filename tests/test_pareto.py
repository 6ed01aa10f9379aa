"""Pareto plots of a tuning study (easyedit_kne/tuning/pareto.py)."""

import json

import pytest

from easyedit_kne.tuning import pareto


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _trial(n, es, loc, **params):
    return {"number": n, "state": "COMPLETE", "params": params,
            "table": {"zsre": {"Edit_Succ": es, "Locality": loc, "Portability": 30.0},
                      "counterfact": {"Edit_Succ": es - 2, "Locality": loc + 2, "Portability": 40.0}}}


def test_front_and_points(tmp_path):
    rows = [_trial(0, 100, 80, nullspace=False), _trial(1, 90, 90, nullspace=True), _trial(2, 95, 70, nullspace=False),
            {"number": 3, "state": "PRUNED", "params": {}}, _trial(4, 100, 85, nullspace=True)]
    _write(tmp_path / "trials.jsonl", rows)
    points = pareto.load_points(str(tmp_path / "trials.jsonl"))
    assert [p["number"] for p in points] == [0, 1, 2, 4]
    assert points[0]["es"] == pytest.approx(99) and points[0]["loc"] == pytest.approx(81)
    front = pareto.pareto_front(points)
    assert [p["number"] for p in front] == [1, 4]  # 0 and 2 are dominated by 4


def test_plot_writes_one_panel_per_present_option(tmp_path):
    rows = [_trial(i, 90 + i, 80 - i, nullspace=bool(i % 2), stop_on=["loss", "accuracy"][i % 2]) for i in range(6)]
    _write(tmp_path / "trials.jsonl", rows)
    assert pareto.main([str(tmp_path)]) == 0
    assert (tmp_path / "pareto.png").stat().st_size > 5000
    drawn = pareto.plot(pareto.load_points(str(tmp_path / "trials.jsonl")), str(tmp_path / "p.png"))
    assert drawn == ["nullspace", "stop_on"]
    with pytest.raises(ValueError, match="no COMPLETE trial"):
        pareto.plot([], str(tmp_path / "none.png"))
