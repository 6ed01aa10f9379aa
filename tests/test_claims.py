"""The claims report (easyedit_kne/bench/claims*.py) on tiny synthetic results trees: each verdict comes out
right (holds / does not hold / inconclusive / not run), the sequential table's retention leaves out the last
edit, the report and its figures are written; and the claims sweeps refuse items outside the dev split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from easyedit_kne.bench import claims as cl
from easyedit_kne.bench import claims_report, dev_split
from easyedit_kne.bench.claims_data import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, NOT_RUN, load_sweep

REPO = Path(__file__).resolve().parent.parent
N = 16
METRIC_KEYS = {"Edit Succ.": "edit", "Portability": "port", "Locality": "loc", "Fluency": "flu"}


def _record(cid: int, edit: float, port: float, loc: float, flu: float) -> dict:
    post = {"rewrite_acc": [edit / 100], "portability": {"Reasoning_acc": [port / 100]},
            "locality": {"Relation_Specificity_acc": [loc / 100]}}
    if flu is not None:  # None: a run with eval.fluency=false
        post["fluency"] = {"ngram_entropy": flu / 100}
    return {"case_id": cid, "pre": post, "post": post,
            "timing": {"edit_s": 1.0, "localization_s": 0.0, "eval_s": 1.0}}


def write_level(root: Path, sweep: str, group: str, name: str, edit, port=None, loc=None, flu=None,
                batch_size: int = 1, offset: int = 200, loc_s: float = 10.0) -> None:
    """One run's folder: cases.jsonl with the given per-item values (x100) and a summary.json."""
    n = len(edit)
    port = [50.0] * n if port is None else port
    loc = [50.0] * n if loc is None else loc
    flu = [500.0] * n if flu is None else [None] * n if flu is False else flu
    d = root / sweep / group / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "cases.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(_record(offset + i, edit[i], port[i], loc[i], flu[i])) + "\n")
    summary = {"method": "KNE", "data": {"type": "zsre", "path": "/k/zsre/ZsRE-test-all.json"},
               "complete": True, "batch_size": batch_size, "n_cases": n,
               "timings": {"localization_s": loc_s, "edit_s_per_case": 1.0}}
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def noisy(mean: float, seed: int, spread: float = 3.0) -> list[float]:
    return list(mean + np.random.default_rng(seed).uniform(-spread, spread, N))


def zero_mean(base: list[float], seed: int) -> list[float]:
    """base plus a symmetric +-5 perturbation with exactly zero mean (an inconclusive difference)."""
    d = np.random.default_rng(seed).uniform(0, 5, N // 2)
    return list(np.asarray(base) + np.concatenate([d, -d]))


def verdicts(lines) -> list[str]:
    return [c.verdict for c in lines]


# ------------------------------------------------------------------------------------------ §4.5 p
@pytest.mark.parametrize("case, expected", [("holds", HOLDS), ("fails", FAILS), ("flat", INCONCLUSIVE)])
def test_p_verdicts(tmp_path, case, expected):
    base = noisy(60, 0)
    for k, p in enumerate(("0.5", "2", "20")):
        step = {"holds": 15 * k, "fails": -15 * k, "flat": 0}[case]
        vary = zero_mean(base, k) if k else base  # per-item differences that vary
        write_level(tmp_path, "p", "zsre-n16", f"p={p}", edit=[v + step for v in vary],
                    port=[v + step for v in vary], loc=[v - step for v in vary])
    lines = cl.claims_p(load_sweep(tmp_path, "p")["zsre-n16"])
    assert verdicts(lines) == [expected] * 3
    assert "p=20 - p=0.5 = " in lines[0].measured and "(n=16)" in lines[0].measured


def test_p_not_run_with_one_level(tmp_path):
    write_level(tmp_path, "p", "zsre-n16", "p=1", edit=noisy(60, 0))
    assert verdicts(cl.claims_p(load_sweep(tmp_path, "p")["zsre-n16"])) == [NOT_RUN] * 3


# ------------------------------------------------------------------------------------------ §4.6 batch
def test_batch_verdicts(tmp_path):
    base = noisy(50, 1)
    edit = {1: 95, 4: 70, 16: 58, 64: 55}  # falls, then levels off
    loc = {1: 40, 4: 70, 16: 60, 64: 30}  # rises then falls
    flu = {1: 400, 4: 420, 16: 440, 64: 480}  # rises
    port_steady_rise = {1: 40, 4: 50, 16: 60, 64: 70}  # rises: "falls" does not hold, the fall does not level
    for bs in edit:
        write_level(tmp_path, "batch", "zsre-n16", f"bs={bs}", edit=[v - 50 + edit[bs] for v in base],
                    port=[v - 50 + port_steady_rise[bs] for v in base], loc=[v - 50 + loc[bs] for v in base],
                    flu=[v - 50 + flu[bs] for v in base], batch_size=bs)
    lines = cl.claims_batch(load_sweep(tmp_path, "batch")["zsre-n16"])
    got = {c.statement: c.verdict for c in lines}
    assert got["Edit Succ. falls with batch size"] == HOLDS
    assert got["Edit Succ. levels off with batch size"] == HOLDS
    assert got["Portability falls with batch size"] == FAILS
    assert got["Portability levels off with batch size"] == INCONCLUSIVE  # equal steps: difference 0
    assert got["Locality rises then falls with batch size"] == HOLDS
    assert got["Fluency rises with batch size"] == HOLDS
    assert "peak at the best inner size, bs=4" in lines[4].measured


def test_batch_peak_at_an_end_does_not_hold(tmp_path):
    base = noisy(50, 2)
    for k, bs in enumerate((1, 4, 16, 64)):
        write_level(tmp_path, "batch", "g", f"bs={bs}", edit=base, loc=[v + 10 * k for v in base], batch_size=bs)
    got = {c.statement: c.verdict for c in cl.claims_batch(load_sweep(tmp_path, "batch")["g"])}
    assert got["Locality rises then falls with batch size"] == FAILS


# ------------------------------------------------------------------------------------------ §4.4 localization size
@pytest.mark.parametrize("shift, expected", [(-0.5, HOLDS), (-20.0, FAILS)])
def test_loc_size_non_inferiority(tmp_path, shift, expected):
    base = noisy(70, 3)
    write_level(tmp_path, "loc_size", "g", "loc=800", edit=base, port=base, loc=base, flu=base, loc_s=800)
    moved = [v + shift for v in base]
    write_level(tmp_path, "loc_size", "g", "loc=200", edit=moved, port=moved, loc=moved, flu=moved, loc_s=200)
    lines = cl.claims_loc_size(load_sweep(tmp_path, "loc_size")["g"])
    assert verdicts(lines) == [expected] * 4
    assert "localization 200 s vs 800 s" in lines[0].measured


def test_loc_size_inconclusive_and_not_run(tmp_path):
    base = noisy(70, 4, spread=30)
    write_level(tmp_path, "loc_size", "g", "loc=800", edit=base)
    write_level(tmp_path, "loc_size", "g", "loc=200", edit=[v - 3 + (20 if i % 2 else -20) for i, v in
                                                            enumerate(base)])
    lines = cl.claims_loc_size(load_sweep(tmp_path, "loc_size")["g"], margin=2.0)
    assert lines[0].verdict == INCONCLUSIVE  # Edit Succ.: mean -3, wide CI straddling -2
    only_200 = [lv for lv in load_sweep(tmp_path, "loc_size")["g"] if lv.params["loc"] == "200"]
    assert verdicts(cl.claims_loc_size(only_200)) == [NOT_RUN] * 4


# ------------------------------------------------------------------------------------------ §4.3 target module
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.mark.parametrize("paper_right", [True, False])
def test_target_module_verdicts(tmp_path, paper_right):
    base = noisy(50, 5)
    for m in MODULES:
        ffn, down, local = m.startswith("mlp."), m == "mlp.down_proj", m in cl.LOCAL_GROUP
        good = paper_right
        edit = 50 + (20 if ffn == good else 0) + (20 if down == good else 0)
        loc = 50 + (25 if local == good else 0)
        for axis, extra in (("out", 0), ("in", -5)):
            write_level(tmp_path, "target_module", "g", f"module={m},axis={axis}",
                        edit=[v - 50 + edit + extra for v in base], port=[v - 50 + edit + extra for v in base],
                        loc=[v - 50 + loc + extra for v in base], flu=[v - 50 + 400 + loc + extra for v in base])
    lines = cl.claims_target_module(load_sweep(tmp_path, "target_module")["g"])
    assert len(lines) == 4
    assert verdicts(lines) == [HOLDS if paper_right else FAILS] * 4
    assert "(out)" in lines[0].measured  # the better axis represents its module


def test_target_module_fluency_not_measured_when_the_sweep_skipped_it(tmp_path):
    """A sweep run with eval.fluency=false: the Fluency line says "not measured", not "inconclusive", and the
    other lines are still decided."""
    base = noisy(50, 5)
    for m in MODULES:
        loc = 75 if m in cl.LOCAL_GROUP else 50
        for axis in ("out", "in"):
            write_level(tmp_path, "target_module", "g", f"module={m},axis={axis}", edit=list(base),
                        loc=[v - 50 + loc for v in base], flu=False)
    lines = cl.claims_target_module(load_sweep(tmp_path, "target_module")["g"])
    assert verdicts(lines)[2:] == [HOLDS, NOT_MEASURED]
    assert "eval.fluency=false" in lines[3].measured


def test_target_module_not_run_without_attention(tmp_path):
    write_level(tmp_path, "target_module", "g", "module=mlp.down_proj,axis=in", edit=noisy(50, 6))
    assert verdicts(cl.claims_target_module(load_sweep(tmp_path, "target_module")["g"])) == [NOT_RUN] * 4


# ------------------------------------------------------------------------------------------ sequential
def test_sequential_retention_leaves_out_the_last_edit(tmp_path):
    write_level(tmp_path, "sequential", "zsre/KNE", "T=4", edit=[0.0, 0.0, 0.0, 100.0])
    write_level(tmp_path, "sequential", "zsre/KNE", "T=1", edit=[100.0])
    rows = cl.sequential_rows(load_sweep(tmp_path, "sequential"))
    kne = {r["T"]: r for r in rows if r["method"] == "KNE"}
    assert kne[4]["Retention"]["mean"] == 0.0 and kne[4]["Retention"]["n"] == 3
    assert kne[4]["Edit Succ."]["mean"] == 25.0
    assert kne[1]["Retention"]["n"] == 0  # no earlier edit
    assert kne[10]["status"] == NOT_RUN
    assert {r["method"] for r in rows} >= set(cl.SEQ_METHODS)
    assert all(r["status"] == NOT_RUN for r in rows if r["method"] == "ROME")


# ------------------------------------------------------------------------------------------ the report
def test_report_lines_figures_and_cli(tmp_path):
    from easyedit_kne.cli import main as cli_main

    root = tmp_path / "claims"
    base = noisy(60, 7)
    for k, p in enumerate(("0.5", "5")):
        write_level(root, "p", "zsre-n16", f"p={p}", edit=[v + 15 * k for v in base])
    out = tmp_path / "docs" / "claims.md"
    assert cli_main(["claims", str(root), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## Decision rule" in text and "does not hold" in text
    claim_rows = [line for line in text.splitlines() if line.startswith("| §")]
    assert len(claim_rows) == 3 + 4 + 4 + 6  # p, loc_size, target_module, batch
    assert sum("**not run**" in line for line in claim_rows) == 14
    assert any("§4.5 [zsre-n16]" in line and "**holds**" in line for line in claim_rows)
    assert (tmp_path / "docs" / "claims" / "p-zsre-n16.png").stat().st_size > 1000
    assert "![p zsre-n16](claims/p-zsre-n16.png)" in text
    assert "| zsre | MEMIT | 100 | - |" in text  # sequential: not-run rows, no numbers
    _, lines = claims_report.build(root, out, figures=False)
    assert len(lines) == len(claim_rows)


# ------------------------------------------------------------------------------------------ the dev-split guard
def test_dev_items_accepts_dev_and_refuses_test():
    assert dev_split.dev_items("zsre", "/x/zsre/ZsRE-test-all.json", 200, 8)[1] == list(range(200, 208))
    with pytest.raises(dev_split.DevSplitRefused, match="TEST items"):
        dev_split.dev_items("zsre", "/x/zsre/ZsRE-test-all.json", 0, 8)
    with pytest.raises(dev_split.DevSplitRefused, match=r"data.offset=200 and data.size<=200"):
        dev_split.dev_items("zsre", "/x/zsre/ZsRE-test-all.json", 300, 101)
    with pytest.raises(dev_split.DevSplitRefused, match="TEST file"):
        dev_split.dev_items("counterfact", "/x/wiki_counterfact/test_cf.json", 200, 8)
    assert dev_split.dev_items("counterfact", "/x/wiki_counterfact/train_cf.json", 1000, 200)[1][-1] == 1199
    with pytest.raises(dev_split.DevSplitRefused, match="data.size=null"):
        dev_split.dev_items("recent", "/x/wiki_recent/recent_train.json", 200, None)


SWEEP_VALUES = {"p": ("method.hparams.p", "0.5,1,2,5,10,20"), "loc_size": ("localization.size", "0,10,25,50,100,200"),
                "batch": ("batch_size", "1,4,16,64")}


@pytest.mark.parametrize("sweep", ["p", "loc_size", "batch", "target_module", "sequential"])
def test_sweep_configs_are_dev_only(sweep):
    from hydra import compose, initialize_config_dir

    from easyedit_kne.bench.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={sweep}", "knowedit_dir=/kd"],
                      return_hydra_config=True)
    assert "dev split: zsre/ZsRE-test-all.json items [200, " in dev_split.check_config(cfg)
    assert cfg.hydra.callbacks.dev_split._target_.endswith("DevSplitGuard")
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    if sweep in SWEEP_VALUES:
        key, values = SWEEP_VALUES[sweep]
        assert params[key] == values
    elif sweep == "target_module":
        assert len(params["claims.module"].split(",")) == 7 and params["claims.axis"] == "out,in"
        assert cfg.method.hparams.target_modules == ["mlp.down_proj"] and cfg.method.hparams.neuron_axis == "out"
    else:
        assert params["method"] == "KNE,FT-M,ROME,MEMIT,FiNE" and params["data.size"] == "100"
        assert list(cfg.checkpoints) == [1, 10, 50] and cfg.edit_mode == "sequential"  # T = 1, 10, 50 on the way
        assert cfg.edit_mode == "sequential"


def test_sweep_command_refuses_test_items(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KNOWEDIT_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "easyedit_kne", "knowedit", "sweep=p", "data.offset=0",
                           "data.size=4", f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "TEST items" in proc.stderr and "data.offset=200" in proc.stderr
    assert not (tmp_path / "out" / "p=0.5").exists()  # stopped before any job


def test_report_figures_for_every_sweep(tmp_path):
    root = tmp_path / "claims"
    base = noisy(60, 8)
    for k, bs in enumerate((1, 4, 16)):
        write_level(root, "batch", "zsre-n16", f"bs={bs}", edit=[v - 5 * k for v in base], batch_size=bs)
    for size in (0, 200, 800):
        write_level(root, "loc_size", "zsre-n16", f"loc={size}", edit=base, loc_s=10.0 * size)
    for m in ("self_attn.q_proj", "mlp.down_proj"):
        for axis in ("in", "out"):
            write_level(root, "target_module", "zsre-n16", f"module={m},axis={axis}", edit=base)
    write_level(root, "sequential", "zsre/KNE", "T=4", edit=[100.0, 0.0, 100.0, 100.0])
    write_level(root, "sequential", "zsre/FiNE", "T=4", edit=[100.0, 100.0, 100.0, 100.0])
    out = tmp_path / "claims.md"
    text, lines = claims_report.build(root, out)
    for name in ("batch-zsre-n16", "loc_size-zsre-n16", "target_module-zsre-n16", "sequential"):
        assert (tmp_path / "claims" / f"{name}.png").stat().st_size > 1000, name
    assert "| zsre | KNE | 4 | 4 | 66.7" in text  # retention of the 3 earlier edits
    assert {c.verdict for c in lines if c.section.startswith("§4.4")} == {HOLDS}  # identical values: 0 >= -2
