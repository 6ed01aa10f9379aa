"""The speed bench (easyedit_kne.bench.speed; scripts/bench_speed.py is its entry point) on a tiny model: its
measurements run, agree numerically and leave the model as
it was. Timings are never asserted (they depend on the machine and its load)."""

import math

import pytest
import tiny_models as tm
import torch

from easyedit_kne.attribution import attribute_request
from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble
from easyedit_kne.modules import find_target_modules
from easyedit_kne.tokens import encode_requests

REQUESTS = [{"prompt": f["prompt"], "target_new": f["target_new"]} for f in tm.FACTS]


@pytest.fixture(scope="module")
def bench():
    from easyedit_kne.bench import speed

    return speed


@pytest.fixture(scope="module")
def tiny():
    tok = tm.make_tokenizer()
    return tm.make_model("llama", tok, num_hidden_layers=4), tok


def _cfg(bench, **kw):
    base = dict(n_modules=4, ig_steps=4, ig_batch_size=6, naive_modules=None, throughput_items=2,
                steps_sweep=(2, 4), modules_sweep=(2, 4), ig_batch_sweep=(4, 16), p=10.0, train_batch=3,
                warmup_steps=1, timed_steps=2, edit_steps=2, edit_requests=1, targets_items=3,
                targets_sweep_items=2, progress=False)
    base.update(kw)
    return bench.BenchConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, type(m).__name__


def test_fast_vs_naive_attribution_agree(bench, tiny):
    model, tok = tiny
    cfg = _cfg(bench)
    targets = find_target_modules(model, [cfg.target_suffix], bench.target_layers(model, cfg.n_modules))
    full = bench.localization_speed(model, tok, REQUESTS[0], targets, cfg, "cpu")
    assert not full["extrapolated"] and full["n_naive"] == full["n_targets"] == 4
    assert full["min_corr"] > 0.999 and full["max_rel"] < 1e-3
    assert full["naive_full_s"] == pytest.approx(full["naive_s"])
    assert full["macs"]["naive"] > full["macs"]["fast"] > 0  # the fast path does fewer multiply-adds
    assert full["gemm_gflops"] > 0

    part = bench.localization_speed(model, tok, REQUESTS[0], targets, _cfg(bench, naive_modules=2), "cpu")
    assert part["extrapolated"] and part["n_naive"] == 2
    assert part["naive_full_s"] == pytest.approx(part["naive_s"] * 2)
    assert part["min_corr"] > 0.999 and part["max_rel"] < 1e-3


def test_evenly_spaced(bench):
    assert bench.evenly_spaced(range(30), 5) == [0, 7, 14, 22, 29]
    assert bench.evenly_spaced(range(30), None) == list(range(30))
    assert bench.evenly_spaced(range(30), 40) == list(range(30))
    assert bench.evenly_spaced(range(30), 1) == [15]


def test_sparse_and_dense_steps_follow_the_same_losses(bench, tiny):
    model, tok = tiny
    cfg = _cfg(bench, timed_steps=3)
    targets = find_target_modules(model, [cfg.target_suffix], bench.target_layers(model, cfg.n_modules))
    scores = attribute_request(model, tok, REQUESTS[0], targets, cfg.ig_steps, cfg.max_length)
    ensemble = KnowledgeNeuronalEnsemble.from_scores(scores, targets, cfg.p, "global")
    assert ensemble.num_neurons > 0
    batch = encode_requests(tok, REQUESTS[1:4], cfg.max_length)
    before = _state(model)
    res = bench.training_step_times(model, batch, ensemble, cfg, "cpu")
    _assert_unchanged(model, before)
    losses = res["losses"]
    assert all(len(v) == cfg.warmup_steps + cfg.timed_steps for v in losses.values())
    # the same entries trained from zero with the same Adam: the same trajectory
    assert losses["sparse"] == pytest.approx(losses["dense"], rel=1e-4, abs=1e-5)
    assert losses["sparse"][-1] < losses["sparse"][0]
    # the frozen model does not learn; its loss is the starting loss of the others
    assert losses["frozen"] == pytest.approx([losses["sparse"][0]] * len(losses["frozen"]), rel=1e-5)
    assert set(res["ms"]) == {"frozen", "sparse", "dense"} and all(v > 0 for v in res["ms"].values())
    assert res["trainable_dense"] > res["trainable_sparse"] > 0


def test_whole_suite_runs_and_renders(bench, tiny, tmp_path):
    model, tok = tiny
    cfg = _cfg(bench, naive_modules=2)
    before = _state(model)
    suite = bench.run_suite(model, tok, REQUESTS[:cfg.n_items], cfg, "cpu", label="tiny llama")
    _assert_unchanged(model, before)  # every edit was undone, every hook removed
    res = suite.results
    assert {m["suffix"] for m in res["memory"]["per_module"]} == set(cfg.memory_suffixes)
    assert [b["ig_batch_size"] for b in res["memory"]["per_batch"]] == [4, 16]
    assert [r["steps"] for r in res["scaling"]["by_steps"]] == [2, 4]
    assert [r["modules"] for r in res["scaling"]["by_modules"]] == [2, 4]
    assert len(res["edit"]["seconds"]) == 4
    text = bench.render([suite], "python scripts/bench_speed.py --test", False, "now", "0", "0")
    for heading in ("### 0.", "### 1.", "### 1b.", "### 2.", "### 3.", "### 4.", "### 5.", "extrapolated from 2 of 4",
                    "Against the tighter naive reference", "Even at the full matmul rate"):
        assert heading in text
    out = tmp_path / "perf.md"
    bench.write_atomic(out, text)
    assert out.read_text(encoding="utf-8") == text


def test_targets_report_has_both_ratios_with_verdicts(bench, tiny):
    """`--sections targets`: (a) default vs naive Eq. 5 m=20 with the ensembles' Jaccard, (b) items/s of the
    default path vs today's fast path, each with its ratio and verdict, and the ig_request_batch sweep."""
    import re

    model, tok = tiny
    cfg = _cfg(bench, sections="targets")
    assert cfg.n_items == 3
    before = _state(model)
    suite = bench.run_suite(model, tok, REQUESTS[:cfg.n_items], cfg, "cpu", label="tiny llama")
    _assert_unchanged(model, before)
    res = suite.results["targets"]
    assert set(suite.results) == {"targets"}
    single, tp = res["single"], res["throughput"]
    assert single["ratio"] == pytest.approx(single["naive_s"] / single["fast_s"])
    assert single["meets"] == (single["ratio"] >= 10)
    assert tp["ratio"] == pytest.approx(tp["today_s"] / tp["default_s"]) and tp["meets"] == (tp["ratio"] >= 3)
    assert tp["today"] == {"ig_method": "riemann_right", "ig_steps": 20, "ig_request_batch": 1}
    assert tp["items"] == 3 and [r["ig_request_batch"] for r in res["request_batch"]] == [1, 4, 8]
    assert all(r["items"] == 2 for r in res["request_batch"])
    # the default path is Eq. 5 m=20 here or close to it: its ensemble overlaps the naive one
    assert all(0.5 <= j <= 1 for j in single["jaccard_vs_naive20"].values())
    text = bench.render([suite], "python scripts/bench_speed.py --sections targets", False, "now", "0", "0")
    assert "### 0." in text and "### 1." not in text
    verdicts = re.findall(r"\*\*([0-9.]+)×\*\* \| (MEETS|MISSES) the ≥ (10|3)× target", text)
    assert [(v, t) for _, v, t in verdicts] == [("MEETS" if single["meets"] else "MISSES", "10"),
                                                ("MEETS" if tp["meets"] else "MISSES", "3")], text
    assert "Jaccard" in text and "ig_request_batch" in text


def test_request_batch_sweep_reuses_the_runs_of_b(bench, tiny):
    from easyedit_kne.bench.speed.targets import TODAY, default_hparams, issue_targets

    model, tok = tiny
    cfg = _cfg(bench, sections="targets")
    targets = find_target_modules(model, [cfg.target_suffix], bench.target_layers(model, 2))
    res = issue_targets(model, tok, REQUESTS[:2], targets, cfg, "cpu", p_values=(10,), sweep_items=0)
    hp = default_hparams(targets, cfg)
    for row in res["request_batch"]:
        k = row["ig_request_batch"]
        same_as_today = (hp.ig_method, hp.ig_steps, k) == tuple(TODAY.values())
        assert row["reused"] == (same_as_today or k == hp.ig_request_batch), row
        if k == hp.ig_request_batch:
            assert row["seconds"] == res["throughput"]["default_s"]
        assert row["items"] == 2


def test_ftl_and_lora_edits_train_then_restore(bench, tiny):
    """FT-L and LoRA of the edit-time section share one step loop: both lower the loss from the unedited
    model's, report the last step's loss, and leave weights, hooks and requires_grad flags as they were."""
    from easyedit_kne.bench.speed import editing

    model, tok = tiny
    cfg = _cfg(bench, edit_steps=3)
    before, flags = _state(model), [p.requires_grad for p in model.parameters()]
    batch = encode_requests(tok, REQUESTS[:1], cfg.max_length)
    with torch.no_grad():
        start = float(editing.nll_loss(model, batch))
    (target,) = find_target_modules(model, [cfg.target_suffix], [2])
    for _, last in (editing.ftl_edit(model, tok, REQUESTS[0], target.module, cfg, "cpu"),
                    editing.lora_edit(model, tok, REQUESTS[0], cfg, "cpu")):
        assert last < start
        _assert_unchanged(model, before)
        assert [p.requires_grad for p in model.parameters()] == flags
    _, none = editing.ftl_edit(model, tok, REQUESTS[0], target.module, _cfg(bench, edit_steps=0), "cpu")
    assert math.isnan(none)  # no step, no loss
