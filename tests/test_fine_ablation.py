"""easyedit_kne.fine.ablation: configurations on items with rollback, fluency on, JSONL per case, resume, summary."""

import json

import pytest
import tiny_models as tm

from easyedit_kne.fine.ablation import config_hparams, main, run_ablation, write_summary


def _request(f, other):
    return {"prompt": f["prompt"], "target_new": f["target_new"], "ground_truth": f["target_true"],
            "subject": f["subject"],
            "locality": {"Relation_Specificity": {"prompt": [other["prompt"]], "ground_truth": [other["target_true"]]}},
            "portability": {"Subject_Aliasing": {"prompt": [f["rephrase_prompt"]], "ground_truth": [f["target_new"]]}}}


BASE = {"alg_name": "FiNE", "model_name": "fact-model", "last_layer": 1, "lr": 0.03, "epochs": 20, "max_length": 40}
CONFIGS = {"base": {}, "tiny-lr": {"lr": 1e-5, "epochs": 2}, "per-neuron": {"delta_per": "neuron"}}


def test_ablation_cases_summary_and_resume(fact_model_copy, tmp_path):
    fm = fact_model_copy
    before = tm.state_of(fm.model)
    requests = [_request(fm.facts[i], fm.facts[i + 3]) for i in range(2)]
    ids = ["cf.json#1000", "cf.json#1001"]
    out = tmp_path / "run"
    path = run_ablation(fm.model, fm.tok, CONFIGS, BASE, requests, ids, str(out), fluency_max_len=12)
    assert tm.same_state(fm.model, before), "every edit must be rolled back"
    rows = [json.loads(x) for x in open(path)]
    assert [(r["item"], r["config"]) for r in rows] == [(i, c) for i in ids for c in CONFIGS]  # items outer
    for r in rows:
        assert set(r["values"]) >= {"Edit Succ.", "Portability", "Locality", "Fluency"}
        assert r["values"]["Fluency"] is not None and r["pre_fluency"] is not None  # fluency is on
        assert r["edit"]["steps"] >= 0 and r["edit"]["num_neurons"] > 0
    by = {(r["item"], r["config"]): r for r in rows}
    assert all(by[(i, "tiny-lr")]["edit"]["steps"] == 2 for i in ids)  # the override reached the edit
    assert by[(ids[0], "base")]["values"]["Edit Succ."] > by[(ids[0], "tiny-lr")]["values"]["Edit Succ."]
    # a rerun skips what is written; a new configuration only adds its cases
    run_ablation(fm.model, fm.tok, {**CONFIGS, "beta1": {"beta": 1.0}}, BASE, requests, ids, str(out),
                 fluency_max_len=12)
    rows = [json.loads(x) for x in open(path)]
    assert len(rows) == 8 and sum(r["config"] == "beta1" for r in rows) == 2
    summary = write_summary(str(out))
    assert list(summary) == ["base", "tiny-lr", "per-neuron", "beta1"]
    assert summary["base"]["Edit Succ."]["n"] == 2 and "paired" not in summary["base"]
    diff = summary["tiny-lr"]["paired"]["Edit Succ."]
    means = {c: summary[c]["Edit Succ."]["mean"] for c in ("tiny-lr", "base")}
    assert diff["mean"] == pytest.approx(means["tiny-lr"] - means["base"])
    table = (out / "summary.md").read_text()
    assert table.startswith("| config | n | Edit Succ.") and "| per-neuron | 2 |" in table
    lines = table.splitlines()
    assert lines[1] == "|---" * 9 + "|" and len(lines) == 2 + 4
    assert main(["--spec", "unused", "--out", str(out), "--summary-only"]) == 0


def test_bad_override_is_refused_before_any_edit(fact_model_copy, tmp_path):
    fm = fact_model_copy
    with pytest.raises(ValueError, match="not FiNE fields"):
        config_hparams(BASE, {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="delta_per"):
        run_ablation(fm.model, fm.tok, {"a": {}, "b": {"delta_per": "pairs"}}, BASE,
                     [_request(fm.facts[0], fm.facts[1])], ["x#0"], str(tmp_path / "r"))
    assert not (tmp_path / "r" / "cases.jsonl").exists()
