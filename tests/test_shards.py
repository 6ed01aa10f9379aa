"""Sharded runs (data.shard=K/N, easyedit_kne/bench/shards.py) and compare's merge of the shards, on the tiny fact
model of test_run_knowedit.py: 2 shards merged give the unsharded run's case ids and values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_run_knowedit import METRIC_KEYS, SCRIPTS, overrides, read_cases, run, write_tiny_run_inputs

from easyedit_kne.bench import compare
from easyedit_kne.bench import shards as sh

FAST = ("data.size=4", "eval.fluency=false")


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    """The tiny fact model saved to a folder and a KnowEdit-format file of its facts (as test_run_knowedit)."""
    return write_tiny_run_inputs(tmp_path_factory.mktemp("shards"))


def test_parse_and_select_shards():
    assert sh.parse_shard(None) is None and sh.parse_shard("null") is None
    assert sh.parse_shard("1/3") == (1, 3) and sh.parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"):
        with pytest.raises(ValueError, match="data.shard="):
            sh.parse_shard(bad)
    ids = list(range(5, 15))
    assert sh.select_shard(ids, 1, (0, 3)) == [5, 8, 11, 14]  # interleaved
    assert sh.select_shard(ids, 3, (1, 2)) == [8, 9, 10, 14]  # whole chunks: [5..7] [8..10] [11..13] [14]
    assert sh.select_shard(ids, 3, (0, 2)) == [5, 6, 7, 11, 12, 13]
    parts = [sh.select_shard(ids, 3, (k, 3)) for k in range(3)]
    assert sorted(sum(parts, [])) == ids
    with pytest.raises(ValueError, match="holds no item.*at most 4 shards"):
        sh.select_shard(ids, 3, (4, 5))
    assert sh._subdir("a=1", "0/2") == "a=1/shard-0-of-2" and sh._subdir("", "1/2") == "shard-1-of-2"
    assert sh._subdir("a=1", None) == "a=1"
    assert sh.shard_output_dir(Path("/r/shard-1-of-2"), (1, 2)) == Path("/r/shard-1-of-2")


def _metrics(s: dict) -> dict:
    return {k: s[k] for k in (*METRIC_KEYS, "n_cases", "n_expected", "complete", "pre_edit")}


def _merged(root: Path) -> dict:
    runs = sh.merge_shard_runs(compare.find_summaries([str(root)]))
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize("mode", [("edit_mode=single",), ("edit_mode=batch", "batch_size=1")],
                         ids=["single", "batch"])
def test_two_shards_merge_to_the_unsharded_run(tiny_run_inputs, tmp_path, mode, capsys):
    full = run(tiny_run_inputs, tmp_path / "full", *FAST, *mode)
    root = tmp_path / "sharded"
    s0 = run(tiny_run_inputs, root, *FAST, *mode, "data.shard=0/2")
    assert s0["n_cases"] == 2 and s0["shard"]["case_ids"] == [0, 2]
    assert (root / "shard-0-of-2" / "cases.jsonl").is_file() and not (root / "cases.jsonl").exists()
    partial = _merged(root)  # one shard only: merged, marked incomplete
    assert partial["summary"]["n_cases"] == 2 and partial["summary"]["n_expected"] == 4
    assert not partial["summary"]["complete"]
    s1 = run(tiny_run_inputs, root, *FAST, *mode, "data.shard=1/2")
    assert s1["shard"]["case_ids"] == [1, 3]
    assert s0["run_config_sha256"] == s1["run_config_sha256"] == full["run_config_sha256"]
    merged = _merged(root)
    assert merged["path"] == str(root) and merged["summary"]["shards"]["present"] == [0, 1]
    assert _metrics(merged["summary"]) == _metrics(full)
    full_cases = {c["case_id"]: c for c in read_cases(tmp_path / "full")}
    assert sorted(merged["cases"]) == sorted(full_cases) == [0, 1, 2, 3]
    for cid, rec in merged["cases"].items():
        assert rec["pre"] == full_cases[cid]["pre"] and rec["post"] == full_cases[cid]["post"]
    # compare merges the shards on its own: the sharded run and the full run give the same row
    assert compare.main([str(tmp_path), "--out-prefix", str(tmp_path / "cmp"), "--no-stats"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| KNE (")][:2]
    assert rows[0].startswith("| KNE (full) |") and rows[1].startswith("| KNE (sharded) |")
    assert rows[0].split("|")[2:] == rows[1].split("|")[2:]  # the Table 1 numbers
    # a rerun of a finished shard resumes (nothing to do, same numbers)
    again = run(tiny_run_inputs, root, *FAST, *mode, "data.shard=1/2")
    assert again["localization"]["reused"] and _metrics(again) == _metrics(s1)


def test_sharding_is_refused_where_it_cannot_merge(tiny_run_inputs, tmp_path):
    with pytest.raises(ValueError, match="sequential.*cannot be split"):
        run(tiny_run_inputs, tmp_path, *FAST, "edit_mode=sequential", "batch_size=2", "data.shard=0/2")
    with pytest.raises(ValueError, match="holds no item"):
        run(tiny_run_inputs, tmp_path, *FAST, "data.shard=4/5")
    with pytest.raises(ValueError, match="K must be in 0..N-1"):
        run(tiny_run_inputs, tmp_path, *FAST, "data.shard=2/2")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def _fake_shard(folder: Path, k: int, n: int, ids: list[int], sha: str = "x", cases=None) -> None:
    folder.mkdir(parents=True)
    metrics = {"rewrite_acc": [1.0], "locality": {}, "portability": {}}
    summary = {"method": "KNE", "model": "tiny", "data": {"type": "zsre"}, "edit_mode": "single", "batch_size": 1,
               "n_cases": len(ids), "n_expected": len(ids), "complete": True, "run_config_sha256": sha,
               "timings": {"prepare_s": 1.0}, "localization": {"split": "tail", "seconds": 2.0},
               "shard": sh.shard_info((k, n), ids, list(range(4)))}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (folder / "run_config.json").write_text(json.dumps({"sha256": sha, "config": {"hparams": {"p": sha}}}))
    lines = [json.dumps({"case_id": c, "pre": metrics, "post": metrics,
                         "timing": {"edit_s": 1.0, "localization_s": 0.0, "eval_s": 1.0}}) for c in cases or ids]
    (folder / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_merge_refuses_mismatched_or_overlapping_shards(tmp_path):
    _fake_shard(tmp_path / "a" / "shard-0-of-2", 0, 2, [0, 2])
    _fake_shard(tmp_path / "a" / "shard-1-of-2", 1, 2, [1, 3], sha="y")
    with pytest.raises(ValueError, match="different configs.*hparams.p: 'x' vs 'y'"):
        _merged(tmp_path / "a")
    _fake_shard(tmp_path / "b" / "shard-0-of-2", 0, 2, [0, 2])
    _fake_shard(tmp_path / "b" / "shard-1-of-2", 1, 2, [1, 3], cases=[1, 2])  # a stray case 2
    with pytest.raises(ValueError, match="overlap.*case id 2"):
        _merged(tmp_path / "b")
    _fake_shard(tmp_path / "c" / "shard-0-of-2", 0, 2, [0, 2])
    _fake_shard(tmp_path / "c" / "shard-1-of-3", 1, 3, [1])
    with pytest.raises(ValueError, match="mix shard counts"):
        _merged(tmp_path / "c")
    _fake_shard(tmp_path / "d" / "shard-0-of-2", 0, 2, [0, 2])
    shutil.copytree(tmp_path / "d" / "shard-0-of-2", tmp_path / "d" / "copy")
    with pytest.raises(ValueError, match="shard-K-of-N folder"):
        _merged(tmp_path / "d")
    with pytest.raises(ValueError, match="different configs"):  # compare.main goes through the same merge
        compare.main([str(tmp_path / "a"), "--out-prefix", str(tmp_path / "cmp")])


def test_joblib_launcher_runs_two_shards_in_parallel_then_compare_merges(tiny_run_inputs, tmp_path, capsys):
    """The documented one-machine example: a 2-job multirun over the shards with hydra/launcher=joblib."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'easyedit-kne[launchers]'")
    out = tmp_path / "sweep"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    args = overrides(tiny_run_inputs, "data.size=2", "eval.fluency=false")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "run_knowedit.py"), "-m", *args, "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "data.shard=0/2,1/2", f"output_dir={out}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr  # the joblib launcher ran the jobs
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]  # the sweep point (its overrides, data.shard left out)
    assert "data.shard" not in run_dir.name
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["shard-0-of-2", "shard-1-of-2"]
    assert [c["case_id"] for c in read_cases(run_dir / "shard-0-of-2")] == [0]
    assert [c["case_id"] for c in read_cases(run_dir / "shard-1-of-2")] == [1]
    assert (run_dir / "shard-1-of-2" / ".hydra" / "overrides.yaml").is_file()
    merged = _merged(out)["summary"]
    assert merged["n_cases"] == 2 and merged["complete"]
    assert compare.main([str(out), "--out-prefix", str(tmp_path / "cmp"), "--no-stats"]) == 0
    assert "| KNE | ZsRE | 2/2 |" in capsys.readouterr().out


def test_slurm_example_config_composes():
    """The shipped Slurm example (conf/launcher/slurm.yaml) composes with hydra-submitit-launcher; no cluster
    here, so nothing is submitted."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'easyedit-kne[slurm]'")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from easyedit_kne.bench.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["+launcher=slurm", "data.shard=1/4"],
                            return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.data.shard == "1/4" and cfg.method.name == "KNE"
