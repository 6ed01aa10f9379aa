"""The KnowEdit runner (easyedit_kne.bench; scripts/run_knowedit.py is its thin entry point), the baselines and
compare, on a tiny model.

The tiny fact model of tests/tiny_models.py is saved to a temporary folder (`model=path model.path=...`) and
a KnowEdit-format JSON is written from its facts; KNE runs on 4 of them in single, batch and sequential mode,
in process through Hydra's compose API (one test goes through the command line). Nothing from ../shared.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tm
import torch

from easyedit_kne.bench import adalora, compare, covariance, easyedit_methods
from easyedit_kne.bench import case_log as cl
from easyedit_kne.bench import requests as rq
from easyedit_kne.bench import run_knowedit as rk
from easyedit_kne.bench.config import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"

N_RECORDS = 16
METRIC_KEYS = ("Edit Succ.", "Portability", "Locality", "Fluency", "Exact Match", "Rephrase")


def knowedit_records(n: int = N_RECORDS) -> list[dict]:
    """ZsRE-style records built from the fact model's facts (prompts all distinct)."""
    facts = tm.FACTS
    out = []
    for i, f in enumerate(facts[:n]):
        other = facts[(i + 3) % len(facts)]
        out.append({
            "subject": f["subject"], "prompt": f["prompt"], "target_new": f["target_new"],
            "ground_truth": [f["target_true"]], "rephrase_prompt": f["rephrase_prompt"],
            "locality": {"Relation_Specificity": [{"prompt": other["prompt"], "ground_truth": [other["target_true"]]}]},
            "portability": {"Reasoning": [{"prompt": f["rephrase_prompt"], "ground_truth": f["target_new"]}]},
        })
    return out


def write_tiny_run_inputs(root):
    """The tiny fact model saved to root/tiny-llama and a KnowEdit-format file of its facts: (model dir, file)."""
    fm = tm.get_fact_model()
    model_dir = root / "tiny-llama"
    fm.model.save_pretrained(model_dir)
    fm.tok.save_pretrained(model_dir)
    data = root / "zsre-tiny.json"
    data.write_text(json.dumps(knowedit_records()), encoding="utf-8")
    return model_dir, data


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    return write_tiny_run_inputs(tmp_path_factory.mktemp("knowedit"))


KNE_FAST = ("method.hparams.ig_steps=4", "method.hparams.num_steps=8", "method.hparams.p=5")


def overrides(inputs, *extra, kne: bool = True) -> list[str]:
    model_dir, data = inputs
    return ["model=path", f"model.path={model_dir}", "data.type=zsre", f"data.path={data}", "data.size=4",
            "localization.size=4", *(KNE_FAST if kne else ()), "eval.fluency_max_len=24", "progress=false",
            "num_threads=1", f"pre_eval_dir={model_dir.parent / 'pre_eval'}", *extra]


def compose(args: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=args)


def run(inputs, out: Path, *extra, kne: bool = True) -> dict:
    return rk.run(compose(overrides(inputs, *extra, kne=kne)), output_dir=out)


def read_cases(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cases.jsonl").read_text(encoding="utf-8").splitlines()]


def metrics(summary: dict) -> dict:
    return {k: summary[k] for k in (*METRIC_KEYS, "n_cases", "n_expected", "complete")}


def check_summary(summary: dict, n: int) -> None:
    assert summary["n_cases"] == n and summary["n_expected"] == n and summary["complete"]
    for key in ("Edit Succ.", "Portability", "Locality", "Exact Match", "Rephrase"):
        assert 0.0 <= summary[key] <= 100.0, key
    assert summary["Fluency"] > 0
    for key in ("localization_s", "edit_s", "evaluation_s"):
        assert summary["timings"][key] >= 0
    assert summary["method"] == "KNE" and summary["data"]["type"] == "zsre"


def test_single_mode_cases_summary_and_disjoint_localization(tiny_run_inputs, tmp_path):
    summary = run(tiny_run_inputs, tmp_path)
    cases = read_cases(tmp_path)
    assert [c["case_id"] for c in cases] == [0, 1, 2, 3]
    for c in cases:
        assert c["pre"]["rewrite_acc"] and c["post"]["rewrite_acc"]
        assert "Relation_Specificity_acc" in c["post"]["locality"]  # locality against the pre-edit outputs
        assert "ngram_entropy" in c["post"]["fluency"] and "exact_match" in c["post"]
        assert set(c["timing"]) == {"edit_s", "localization_s", "eval_s"}
    check_summary(summary, 4)
    assert summary["Edit Succ."] > summary["pre_edit"]["Edit Succ."]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert metrics(on_disk) == metrics(summary)
    loc = summary["localization"]
    assert loc["split"] == "tail" and loc["indices"] == [N_RECORDS - 4, N_RECORDS] and loc["disjoint"]
    assert loc["reused"] is False and (tmp_path / "ensemble.safetensors").is_file()
    # a rerun resumes: nothing to do, the ensemble is reused, same numbers
    again = run(tiny_run_inputs, tmp_path)
    assert len(read_cases(tmp_path)) == 4
    assert again["localization"]["reused"] is True
    assert metrics(again) == metrics(summary)


def test_an_interrupted_localization_resumes_from_its_per_request_scores(tiny_run_inputs, tmp_path, monkeypatch):
    from easyedit_kne import attribution
    from easyedit_kne.bench.ours import LOCALIZATION_CACHE
    from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble

    args = ("+method.hparams.ig_request_batch=1", "data.size=1")  # one request per attribution pass
    run(tiny_run_inputs, tmp_path / "ref", *args)
    real, calls = attribution.attribute_requests, []

    def interrupted_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(attribution, "attribute_requests", interrupted_at_the_third)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_run_inputs, out, *args)
    assert len(list((out / LOCALIZATION_CACHE).rglob("*.safetensors"))) == 2 and not (out / cl.ENSEMBLE).exists()
    resumed = run(tiny_run_inputs, out, *args)
    assert len(calls) == 5  # 2 before the interruption, the interrupted one, the 2 left after it
    ens, ref = (KnowledgeNeuronalEnsemble.load(p / cl.ENSEMBLE) for p in (out, tmp_path / "ref"))
    assert ens.metadata["cache"] == {"hits": 2, "misses": 2}
    assert ens.neurons.keys() == ref.neurons.keys()
    assert all(torch.equal(ens.neurons[k], ref.neurons[k]) for k in ref.neurons)
    assert not (out / LOCALIZATION_CACHE).exists() and resumed["n_cases"] == 1  # scores dropped once saved
    # with hparams.cache_dir set, that cache is used and kept (and the run folder gets none)
    user_cache = tmp_path / "user_cache"
    run(tiny_run_inputs, tmp_path / "with_cache", *args, f"method.hparams.cache_dir={user_cache}")
    assert len(list(user_cache.rglob("*.safetensors"))) == 4
    assert not (tmp_path / "with_cache" / LOCALIZATION_CACHE).exists()


def test_a_run_resumes_after_hparams_fields_were_added_at_their_defaults(tiny_run_inputs, tmp_path):
    import hashlib

    from easyedit_kne.hparams import KNEHyperParams

    run(tiny_run_inputs, tmp_path, "data.size=1")
    path = tmp_path / cl.RUN_CONFIG
    current = json.loads(path.read_text(encoding="utf-8"))["config"]

    def written_before(*fields):  # the run_config of a run written before these fields existed
        config = json.loads(json.dumps(current))
        for name in fields:
            del config["hparams"][name]
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        path.write_text(json.dumps({"sha256": digest, "config": config}), encoding="utf-8")
        return path.read_text(encoding="utf-8")

    assert current["hparams"]["kl_subject_count"] == KNEHyperParams.kl_subject_count  # at its default
    before = written_before("kl_subject_count", "nullspace")
    summary = run(tiny_run_inputs, tmp_path, "data.size=1")  # accepted; the file is left as it was
    assert path.read_text(encoding="utf-8") == before
    assert summary["run_config_sha256"] == json.loads(before)["sha256"]
    assert current["hparams"]["p"] != KNEHyperParams.p  # KNE_FAST sets p=5: not the default
    written_before("p")
    with pytest.raises(ValueError, match="another config"):
        run(tiny_run_inputs, tmp_path, "data.size=1")
    assert rk.without_added_defaults({"hparams": {"a": 1}}, {"hparams": {"a": 1, "b": 0, "c": 2}},
                                     {"b": 0, "c": 0}) == {"hparams": {"a": 1, "c": 2}}


def test_batch_mode_resume_after_stop_mid_chunk(tiny_run_inputs, tmp_path):
    args = ("edit_mode=batch", "batch_size=3")
    full = run(tiny_run_inputs, tmp_path / "full", *args)
    assert [c["chunk"] for c in read_cases(tmp_path / "full")] == [[0, 2]] * 3 + [[3, 3]]
    out = tmp_path / "resumed"
    with pytest.raises(rk.StopAfter):
        run(tiny_run_inputs, out, *args, "stop_after=2")  # stops inside the first chunk of 3
    assert [c["case_id"] for c in read_cases(out)] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2  # written before stopping
    resumed = run(tiny_run_inputs, out, *args)
    cases = read_cases(out)
    assert sorted(c["case_id"] for c in cases) == [0, 1, 2, 3]  # no loss, no duplicate
    check_summary(resumed, 4)
    assert metrics(resumed) == metrics(full)
    posts = {c["case_id"]: c["post"] for c in read_cases(tmp_path / "full")}
    assert all(c["post"] == posts[c["case_id"]] for c in cases)


def test_sequential_mode_resume_after_truncated_line(tiny_run_inputs, tmp_path):
    args = ("edit_mode=sequential", "batch_size=2")
    full = run(tiny_run_inputs, tmp_path / "full", *args)
    out = tmp_path / "resumed"
    with pytest.raises(rk.StopAfter):
        run(tiny_run_inputs, out, *args, "stop_after=3")
    assert (out / "sequential_state.safetensors").is_file() and len(read_cases(out)) == 3
    # a run killed while writing its 3rd line: cut that line in the middle
    data = (out / "cases.jsonl").read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    (out / "cases.jsonl").write_bytes(data[: last_start + (len(data) - last_start) // 2])
    resumed = run(tiny_run_inputs, out, *args)
    ids = [c["case_id"] for c in read_cases(out)]
    assert sorted(ids) == [0, 1, 2, 3] and len(ids) == 4
    check_summary(resumed, 4)
    assert metrics(resumed) == metrics(full)


def test_case_log_tolerates_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text('{"case_id": 0, "x": 1}\n{"case_id": 1, "x": 2}\n{"case_id": 2, "x"', encoding="utf-8")
    log = cl.CaseLog(path)
    assert sorted(log.load()) == [0, 1] and log.dropped_tail > 0
    log.append({"case_id": 2, "x": 3})
    assert [json.loads(x)["case_id"] for x in path.read_text().splitlines()] == [0, 1, 2]
    path.write_text('{"case_id": 0}', encoding="utf-8")  # complete record without its newline: kept
    assert sorted(cl.CaseLog(path).load()) == [0] and path.read_text() == '{"case_id": 0}\n'
    path.write_text('{"case_id": 0}\nnot json\n{"case_id": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="damaged"):
        cl.CaseLog(path).load()


def test_localization_plans_are_disjoint_from_evaluated_items(tiny_run_inputs, tmp_path):
    model_dir, data = tiny_run_inputs
    records = knowedit_records()
    requests, ids, n_file = rq.load_eval_requests(compose(overrides(tiny_run_inputs)))
    cfg = compose(overrides(tiny_run_inputs))
    loc, desc = rq.plan_localization(cfg, requests, ids, n_file)
    assert desc["indices"] == [12, 16] and [r["prompt"] for r in loc] == [r["prompt"] for r in records[12:]]
    # the tail may not reach into the evaluated items
    cfg = compose(overrides(tiny_run_inputs, "localization.size=13"))
    with pytest.raises(ValueError, match="evaluated"):
        rq.plan_localization(cfg, requests, ids, n_file)
    # a separate file: items sharing a prompt with an evaluated item are left out
    other = tmp_path / "train.json"
    other.write_text(json.dumps(records[2:8]), encoding="utf-8")  # records 2, 3 are evaluated
    cfg = compose(overrides(tiny_run_inputs, "localization.split=file", f"localization.path={other}",
                            "localization.size=3"))
    loc, desc = rq.plan_localization(cfg, requests, ids, n_file)
    assert [r["prompt"] for r in loc] == [r["prompt"] for r in records[4:7]] and desc["skipped_same_prompt"] == 2
    cfg = compose(overrides(tiny_run_inputs, "localization.size=0"))
    assert rq.plan_localization(cfg, requests, ids, n_file)[0] is None


def test_a_method_config_fixes_its_own_localization_size(tiny_run_inputs):
    """KNE-paper localizes on the authors' 200 items whatever localization.size says; a bad value names the field."""
    requests, ids, n_file = rq.load_eval_requests(compose(overrides(tiny_run_inputs)))
    cfg = compose(overrides(tiny_run_inputs, "localization.size=4", "+method.localization_size=2"))
    loc, desc = rq.plan_localization(cfg, requests, ids, n_file)
    assert len(loc) == 2 and desc["size"] == 2
    cfg = compose(overrides(tiny_run_inputs, "+method.localization_size=-1"))
    with pytest.raises(ValueError, match="localization_size=-1"):
        rq.plan_localization(cfg, requests, ids, n_file)
    paper = compose(["method=KNE-paper", "data=zsre"])
    assert paper.method.localization_size == 200 and compose(["method=KNE"]).method.get("localization_size") is None


def test_missing_knowedit_file_says_where_to_get_it(tmp_path):
    cfg = compose(["data=zsre", f"knowedit_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="zjunlp/KnowEdit.*knowedit_dir=.*data.path="):
        rq.load_eval_requests(cfg)


def test_other_config_in_same_output_dir_is_refused(tiny_run_inputs, tmp_path):
    run(tiny_run_inputs, tmp_path, "data.size=2", "eval.fluency=false")
    with pytest.raises(ValueError, match="another config"):
        run(tiny_run_inputs, tmp_path, "data.size=2", "eval.fluency=false", "method.hparams.p=10")
    summary = run(tiny_run_inputs, tmp_path, "data.size=2", "eval.fluency=false", "method.hparams.p=10",
                  "overwrite=true")
    assert summary["hparams"]["p"] == 10 and summary["Fluency"] is None


def test_easyedit_baselines_without_easyedit_say_how_to_get_it(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("EASYEDIT_PATH", raising=False)
    if "easyeditor" in sys.modules:
        pytest.skip("easyeditor is importable here")
    with pytest.raises(ImportError, match="EASYEDIT_PATH"):
        run(tiny_run_inputs, tmp_path, "method=ROME", "easyedit.path=null", kne=False)


def test_adalora_baseline_edits_and_restores_exactly(fact_model_copy):
    model, tok = fact_model_copy.model, fact_model_copy.tok
    tok.padding_side = "left"
    fact = fact_model_copy.facts[0]
    request = {"prompt": fact["prompt"], "target_new": fact["target_new"], "subject": fact["subject"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = adalora.AdaLoRAHyperParams(model_name="tiny", num_steps=12, lr=2e-2, rank=2,
                                      target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    method = adalora.AdaLoRAMethod("AdaLoRA", hp, "test")
    result = method.edit(model, tok, [request])
    assert result.model.peft_config["default"].total_step == 12
    assert result.model.peft_config["default"].rank_pattern  # ranks were (re)allocated
    assert tm.fact_hits(result.model, tok, [request], target_key="target_new")[0]
    restored = result.restore()
    assert restored is model and not hasattr(restored, "peft_config")
    after = dict(restored.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    # sequential: merged into the weights, a plain model comes back
    seq = method.edit(model, tok, [request], sequential=True)
    assert not hasattr(seq.model, "peft_config") and method.touched_parameters()
    assert tm.fact_hits(seq.model, tok, [request], target_key="target_new")[0]


def test_covariance_statistics_in_easyedit_cache_format(fact_model, tmp_path):
    import numpy as np

    model, tok = fact_model.model, tm.make_tokenizer()
    texts = [f"{f['prompt']} {f['target_true']}." for f in fact_model.facts]
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    plan = covariance.covariance_plan(str(text_file), None, max_texts=20)
    assert plan.n_samples == 20 and plan.dataset_name.startswith("local_")

    class HP:
        rewrite_module_tmp = "model.layers.{}.mlp.down_proj"
        layers = [1, 2]
        stats_dir = str(tmp_path / "stats")
        mom2_dtype = "float32"

    info = covariance.ensure_covariance_stats(model, tok, HP, plan, progress=False)
    assert len(info["files"]) == 2 and info["computed_now"]
    name = model.config._name_or_path.rsplit("/")[-1]
    path = (tmp_path / "stats" / name / f"{plan.dataset_name}_stats"
            / "model.layers.1.mlp.down_proj_float32_mom2_20.npz")
    assert str(path) in info["files"]
    state = np.load(path)
    assert set(state.files) == {"mom2.constructor", "mom2.count", "mom2.mom2", "sample_size"}
    assert int(state["sample_size"]) == 20 and state["mom2.mom2"].dtype == np.float32
    # the second moment of the down_proj inputs over the texts' tokens, one text at a time
    feats = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: feats.append(a[0][0]))
    with torch.no_grad():
        for t in plan.texts:
            model(**tok(t, return_tensors="pt"))
    hook.remove()
    x = torch.cat(feats).double()
    assert int(state["mom2.count"]) == x.shape[0]
    assert np.allclose(state["mom2.mom2"], (x.t() @ x).numpy(), rtol=1e-4, atol=1e-4)
    again = covariance.ensure_covariance_stats(model, tok, HP, plan, progress=False)
    assert again["computed_now"] == []  # cached


def test_rescale_layers():
    assert easyedit_methods.rescale_layers([21], 28, 30) == [22]
    assert easyedit_methods.rescale_layers([4, 5, 6, 7, 8], 28, 30) == [4, 5, 6, 7, 8]
    assert easyedit_methods.rescale_layers([4, 5, 6, 7, 8], 32, 4) == [0, 1, 2, 3]
    assert easyedit_methods.rescale_layers([5], 28, 28) == [5]
    config, notes = easyedit_methods.adapt_easyedit_config(
        {"layers": [5], "v_loss_layer": 27, "fp16": True, "device": 0}, source_name="llama3.2-3b",
        model_path="/m/llama", depth=30, device="cpu", batch_size=1, overrides={"v_lr": 0.1, "layers": None})
    assert config == {"layers": [5], "v_loss_layer": 29, "fp16": False, "device": "cpu", "model_name": "/m/llama",
                      "model_parallel": False, "batch_size": 1, "v_lr": 0.1}


def fake_summary(method: str, data_type: str, edit: float, complete: bool = True) -> dict:
    return {"method": method, "model": "tiny", "data": {"type": data_type}, "edit_mode": "single",
            "batch_size": 1, "n_cases": 4, "n_expected": 4, "complete": complete, "Edit Succ.": edit,
            "Portability": 10.0, "Locality": 90.0, "Fluency": 500.0 + edit, "Exact Match": edit / 2,
            "Rephrase": None, "timings": {"localization_s": 1.0, "edit_s": 4.0, "evaluation_s": 2.0,
                                          "edit_s_per_case": 1.0, "evaluation_s_per_case": 0.5}}


def test_compare_table_csv_png(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, method in ((a, "KNE"), (b, "FT-L")):
        for data_type, edit in (("zsre", 80.0), ("counterfact", 70.0)):
            run_dir = root / data_type
            run_dir.mkdir(parents=True)
            summary = fake_summary(method, data_type, edit + (5 if method == "KNE" else 0))
            (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    prefix = tmp_path / "out" / "table"
    assert compare.main([str(a), str(b), "--out-prefix", str(prefix)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert "ZsRE Edit Succ." in header and "WikiData_counterfact Fluency" in header
    assert header.index("ZsRE") < header.index("WikiData_counterfact")
    rows = [line for line in lines if line.startswith("| FT-L |") or line.startswith("| KNE |")]
    assert rows[0].startswith("| FT-L |") and "85.00" in rows[1]  # Table 1 order: baselines first, KNE last
    assert (Path(f"{prefix}.md")).read_text() == text
    csv_lines = Path(f"{prefix}.csv").read_text().splitlines()
    assert csv_lines[0].startswith("label,method,model,dataset") and len(csv_lines) == 5
    pytest.importorskip("matplotlib")
    png = Path(f"{prefix}.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_tells_sweep_runs_apart(tmp_path, capsys):
    for p, edit in (("0.5", 60.0), ("1", 70.0)):
        d = tmp_path / f"method.hparams.p={p}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(fake_summary("KNE", "zsre", edit, complete=p == "1")))
    assert compare.main([str(tmp_path), "--out-prefix", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "| KNE (method.hparams.p=0.5) | 60.00* |" in text and "| KNE (method.hparams.p=1) | 70.00 |" in text
    assert not math.isnan(float(Path(tmp_path / "cmp.csv").read_text().splitlines()[1].split(",")[9]))


def _case(cid: int, rewrite: float, error: bool = False) -> dict:
    if error:
        return {"case_id": cid, "error": "boom"}
    metrics = {"rewrite_acc": [rewrite], "locality": {}, "portability": {}}
    return {"case_id": cid, "pre": metrics, "post": metrics,
            "timing": {"localization_s": 0.0, "edit_s": 2.0 * (cid + 1), "eval_s": 1.0}}


def test_compare_common_scores_runs_on_shared_cases(tmp_path, capsys):
    """--common: a 4-case run next to a 2-case run (one case failed) is scored on the 2 cases both finished."""
    big, small = tmp_path / "KNE", tmp_path / "FT-L"
    runs = {big: ("KNE", [_case(0, 1.0), _case(1, 0.5), _case(2, 0.0), _case(3, 0.0)]),
            small: ("FT-L", [_case(0, 0.25), _case(1, 0.0, error=True), _case(2, 0.75)])}
    for folder, (method, cases) in runs.items():
        folder.mkdir()
        summary = dict(fake_summary(method, "zsre", 0.0), data={"type": "zsre", "path": "/d/zsre.json"})
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        lines = [json.dumps(c) for c in cases]
        (folder / "cases.jsonl").write_text("\n".join(lines) + "\n" + '{"case_id": 5, "pre', encoding="utf-8")
    assert compare.main([str(big), str(small), "--common", "--out-prefix", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "| FT-L | 50.00 |" in text  # cases 0 and 2: (0.25 + 0.75) / 2
    assert "| KNE | 50.00 |" in text  # cases 0 and 2: (1.0 + 0.0) / 2, not the 4-case mean 37.5
    assert "| KNE | ZsRE | 2 common (4 in the run) |" in text and "--common" in text
    assert "| FT-L | ZsRE | 2 common (2 in the run) |" in text
    row = next(r for r in csv.DictReader(open(tmp_path / "cmp.csv")) if r["method"] == "KNE")
    assert float(row["edit_s_per_case"]) == 4.0  # (2 + 6) / 2
    (small / "cases.jsonl").write_text(json.dumps(_case(1, 0.5)) + "\n", encoding="utf-8")
    (big / "cases.jsonl").write_text(json.dumps(_case(0, 0.5)) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="share no finished case"):
        compare.main([str(big), str(small), "--common", "--out-prefix", str(tmp_path / "cmp2")])


@pytest.mark.parametrize("name,key", [("p", "method.hparams.p"), ("loc_size", "localization.size"),
                                      ("batch", "batch_size"), ("target_module", "claims.module"),
                                      ("table", "method")])
def test_sweep_configs_compose(name, key):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"sweep={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and key in cfg.hydra.sweeper.params
    if name == "batch":
        assert cfg.edit_mode == "batch" and cfg.data.size == 64


def test_command_line_multirun_one_dir_per_run_then_resume(tiny_run_inputs, tmp_path, capsys):
    """The Hydra entry point: a 2-run sweep, each run in its own dir; then a killed run's dir resumed."""
    out = tmp_path / "sweep"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [a for a in overrides(tiny_run_inputs, "data.size=2", "eval.fluency=false")
            if not a.startswith("method.hparams.p=")]
    proc = subprocess.run([sys.executable, str(SCRIPTS / "run_knowedit.py"), "-m", *args,
                           "method.hparams.p=5,10", f"output_dir={out}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in out.rglob("summary.json"))
    assert len(runs) == 2 and all("method.hparams.p=" in r.name and "data.path" not in r.name for r in runs)
    assert all((r / ".hydra" / "config.yaml").is_file() and len(read_cases(r)) == 2 for r in runs)
    assert compare.main([str(out), "--out-prefix", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "method.hparams.p=5" in text and "method.hparams.p=10" in text
    # as if the p=5 run had been killed while writing its last line: the rerun writes just that case again
    run_dir = next(r for r in runs if "method.hparams.p=5," in r.name + ",")
    first = json.loads((run_dir / "summary.json").read_text())
    data = (run_dir / "cases.jsonl").read_bytes()
    (run_dir / "cases.jsonl").write_bytes(data[: len(data) - 40])
    again = run(tiny_run_inputs, run_dir, "data.size=2", "eval.fluency=false")
    assert [c["case_id"] for c in read_cases(run_dir)] == [0, 1]
    assert metrics(again) == metrics(first)


def test_fine_through_the_runner(tiny_run_inputs, tmp_path):
    summary = run(tiny_run_inputs, tmp_path, "method=FiNE", kne=False)
    assert summary["method"] == "FiNE" and summary["n_cases"] == 4 and summary["complete"]
    assert summary["Edit Succ."] > summary["pre_edit"]["Edit Succ."]
    assert len(read_cases(tmp_path)) == 4
