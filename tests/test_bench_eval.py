"""`easyedit-kne bench-eval` (easyedit_kne/bench/bench_eval.py) on the tiny fact model: today's evaluation, the
cached + batched one and the post-edit fluency sample alone give the same values, and the report carries the
timings and ratios (no timing is asserted: speed is the benchmark's to print, not a unit test's)."""

from __future__ import annotations

import json

import pytest
from test_run_knowedit import write_tiny_run_inputs

from easyedit_kne.bench import bench_eval
from easyedit_kne.bench.portable import audit


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-eval")
    write_tiny_run_inputs(root)
    return root


def _run(root, *extra) -> tuple[int, dict]:
    out = root / "report.json"
    rc = bench_eval.main(["--model", str(root / "tiny-llama"), "--data", str(root / "zsre-tiny.json"),
                          "--offset", "0", "--size", "2", "--json", str(out), *extra])
    return rc, json.loads(out.read_text(encoding="utf-8"))


def test_bench_eval_reports_identical_values_and_the_fluency_ceiling(inputs, capsys):
    rc, report = _run(inputs)
    assert rc == 0 and report["identical"] is True
    assert audit(report) == [] and report["items"].startswith("${elsewhere}/zsre-tiny.json")  # no machine path
    per = report["seconds_per_case"]
    assert set(per) == {"today", "new_cold", "new_warm", "fluency_alone"} and all(v > 0 for v in per.values())
    assert report["ratio_ceiling"] == pytest.approx(per["today"] / per["fluency_alone"])
    assert report["ratio_warm"] == pytest.approx(per["today"] / per["new_warm"])
    printed = capsys.readouterr().out
    assert "post-edit fluency sample alone" in printed and "no evaluation with the same values" in printed


def test_bench_eval_fails_when_the_fluency_sample_alone_differs(inputs, monkeypatch):
    """The fluency-alone sample is checked against the evaluation's: seeded one further, its text differs and
    the benchmark exits 1."""
    real = bench_eval._alone_generator
    monkeypatch.setattr(bench_eval, "_alone_generator", lambda seed: real(seed + 1))
    rc, report = _run(inputs)
    assert rc == 1 and report["identical"] is False
