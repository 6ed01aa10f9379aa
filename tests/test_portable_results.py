"""Results folders without machine paths (easyedit_kne.bench.portable): a run written under one root, moved to
another root, resumes there without recomputing its finished cases, and none of its files holds an absolute
path. On the tiny fact model; nothing from ../shared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_models as tm
from test_run_knowedit import KNE_FAST, compose, knowedit_records

from easyedit_kne.bench import portable
from easyedit_kne.bench import run_knowedit as rk


def _make_root(root: Path) -> None:
    fm = tm.get_fact_model()
    fm.model.save_pretrained(root / "models" / "tiny-llama")
    fm.tok.save_pretrained(root / "models" / "tiny-llama")
    data = root / "knowedit" / "zsre" / "ZsRE-test-all.json"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(knowedit_records()), encoding="utf-8")


def _run(root: Path, *extra) -> dict:
    args = ["model=path", f"model.path={root / 'models' / 'tiny-llama'}", "data=zsre", "data.size=2",
            f"knowedit_dir={root / 'knowedit'}", "localization.size=4", *KNE_FAST, "eval.fluency_max_len=24",
            "progress=false", "num_threads=1", f"pre_eval_dir={root / 'benchmarks' / 'pre_eval'}", *extra]
    return rk.run(compose(args), output_dir=root / "benchmarks" / "tiny" / "dev" / "zsre" / "KNE")


def test_run_moved_to_another_root_resumes_without_recomputing_and_is_path_free(tmp_path):
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    _make_root(first)
    with pytest.raises(rk.StopAfter):
        _run(first, "stop_after=1")
    out_a = first / "benchmarks" / "tiny" / "dev" / "zsre" / "KNE"
    assert portable.audit_folder(first / "benchmarks") == []
    case0 = (out_a / "cases.jsonl").read_text(encoding="utf-8")
    config = json.loads((out_a / "run_config.json").read_text(encoding="utf-8"))["config"]
    assert config["data"]["path"] == "${knowedit_dir}/zsre/ZsRE-test-all.json"
    assert config["model"]["name"] == "tiny-llama" and len(config["model"]["sha256"]) == 64
    assert config["hparams"]["model_name"] == "${model:tiny-llama}"
    shutil.move(str(first), str(second))  # the whole tree on another machine: machine-a no longer exists
    out_b = second / "benchmarks" / "tiny" / "dev" / "zsre" / "KNE"
    summary = _run(second)
    lines = (out_b / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0] + "\n" == case0  # case 0 kept as it was, only case 1 computed
    assert summary["n_cases"] == 2 and summary["complete"]
    assert summary["localization"]["reused"] is True and summary["localization"]["ensemble"] == "ensemble.safetensors"
    assert summary["output_dir"].endswith("benchmarks/tiny/dev/zsre/KNE") and not summary["output_dir"].startswith("/")
    assert summary["versions"]["torch"] and summary["machine"]["cpu_count"] >= 1
    assert portable.audit_folder(second / "benchmarks") == []
    assert not list(tmp_path.glob("machine-a"))


def test_old_run_config_with_absolute_paths_is_migrated_and_resumes(tmp_path):
    _make_root(tmp_path)
    with pytest.raises(rk.StopAfter):
        _run(tmp_path, "stop_after=1")
    out = tmp_path / "benchmarks" / "tiny" / "dev" / "zsre" / "KNE"
    path = out / "run_config.json"
    old = json.loads(path.read_text(encoding="utf-8"))
    old["config"]["data"]["path"] = str(tmp_path / "knowedit" / "zsre" / "ZsRE-test-all.json")
    old["config"]["model"] = {"path": str(tmp_path / "models" / "tiny-llama"), "dtype": "float32"}
    old["sha256"] = "0" * 64
    path.write_text(json.dumps(old), encoding="utf-8")
    summary = _run(tmp_path)
    assert summary["n_cases"] == 2
    assert portable.audit_folder(out) == []


def test_portable_text_names_roots_and_drops_unknown_folders():
    roots = [("/work/x/run", "."), ("/work/kd", "${knowedit_dir}"), ("/work/x", "")]
    text = "texts: /work/kd/wikibio/a.json, /work/x/hparams/KNE/s.yaml and /root/.cache/m/model.bin"
    assert portable.portable_text(text, sorted(roots, key=lambda p: -len(p[0]))) == (
        "texts: ${knowedit_dir}/wikibio/a.json, hparams/KNE/s.yaml and ${elsewhere}/model.bin")
    assert portable.portable_text("/work/x/run/ensemble.safetensors", roots) == "ensemble.safetensors"
    assert portable.audit({"a": ["ok 1/2", "/home/u/f"]}) == ["a[0]: /home/u/f"] or portable.audit(
        {"a": ["ok 1/2", "/home/u/f"]}) == ["a[1]: /home/u/f"]


def test_roots_outside_the_usual_top_folders_are_still_rewritten():
    # a CI checkout at /check/work/main with the data beside it: no usual top folder, yet known roots
    roots = [("/check/work/main/benchmarks/run", "."), ("/check/work/shared/data/knowedit", "${knowedit_dir}"),
             ("/check/work/main", "")]
    roots = sorted(roots, key=lambda p: -len(p[0]))
    text = "/check/work/main/benchmarks/x/kne-fixture.yaml"
    assert portable.portable_text(text, roots) == "benchmarks/x/kne-fixture.yaml"
    assert portable.portable_text("/check/work/shared/data/knowedit/zsre/ZsRE-test-all.json", roots) == (
        "${knowedit_dir}/zsre/ZsRE-test-all.json")
    assert portable.portable_text("see /check/work/main/benchmarks/run/ensemble.safetensors", roots) == (
        "see ensemble.safetensors")
    # a longer sibling name is not a root's child
    assert portable.portable_text("/check/work/mainly/f.txt", roots) == "/check/work/mainly/f.txt"


def test_run_roots_hold_the_resolved_and_the_written_form_of_a_linked_folder(tmp_path):
    from omegaconf import OmegaConf

    real = tmp_path / "real_data"
    real.mkdir()
    link = tmp_path / "linked_data"
    link.symlink_to(real)
    cfg = OmegaConf.create({"knowedit_dir": str(link), "model": {"name": "m"}, "easyedit": {}})
    roots = portable.run_roots(cfg, tmp_path / "out")
    assert (str(real.resolve()), "${knowedit_dir}") in roots
    assert (str(link), "${knowedit_dir}") in roots
    assert portable.portable_text(str(link / "zsre" / "a.json"), roots) == "${knowedit_dir}/zsre/a.json"


def test_committed_result_files_hold_no_machine_path():
    """Every committed file under benchmarks/ (JSON, JSON lines, safetensors headers, and the text files beside
    them) is path-free, so a clone on another machine reads and resumes them as they are."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout: the committed files are those `git ls-files benchmarks` lists")
    files = subprocess.run(["git", "ls-files", "benchmarks"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files, "git ls-files found no committed result"
    hits = []
    for name in files:
        f = repo / name
        if f.suffix in (".json", ".jsonl", ".safetensors"):
            hits += portable.audit_folder_files([f])
        elif f.suffix in (".md", ".yaml", ".yml", ".txt", ".csv"):
            hits += [f"{name}: {m.group(0)}" for m in portable.ABSOLUTE.finditer(f.read_text(encoding="utf-8"))]
    assert hits == [], "\n".join(hits[:20])
