"""The wheel as a user installs it: built from this checkout, installed WITH its dependencies into a fresh
venv outside the repository, then run from a folder outside the repository on a tiny model and a tiny
KnowEdit file: `easyedit-kne hparams list`, `easyedit-kne localize`, a 1-item `easyedit-kne knowedit`, and
`from_hparams("llama-7b")` reading the copy the wheel ships.

torch comes from the pin that is installed here (TORCH_SPEC overrides it, e.g. torch==2.13.0; pip takes it
from its cache or a local wheel); the other dependencies come from the package index through pip's cache.
The test takes a couple of minutes; KNE_SKIP_WHEEL_TEST=1 skips it (e.g. offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.wheel,
    pytest.mark.skipif(os.environ.get("KNE_SKIP_WHEEL_TEST") == "1", reason="KNE_SKIP_WHEEL_TEST=1"),
]
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".ruff_cache", "results", "outputs", "multirun", ".cache", "ee-venv")


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _torch_spec() -> str:
    import torch

    return os.environ.get("TORCH_SPEC") or f"torch=={torch.__version__.split('+')[0]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, env for running it, a work folder outside the repository, the wheel)."""
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents
    src = root / "src"  # a clean copy: an in-tree build/ of an older layout cannot leak into the wheel
    shutil.copytree(REPO, src, ignore=IGNORE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    _run([sys.executable, "-m", "pip", "wheel", src, "-w", root / "dist", "--no-deps", "-q"], root, env)
    wheel = next((root / "dist").glob("easyedit_kne-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], root, env)
    bin_dir = venv / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", _torch_spec()], root, env)
    _run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], root, env)  # with its dependencies
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = root / "work"
    work.mkdir()
    return bin_dir, env, work, wheel


@pytest.fixture(scope="module")
def tiny_inputs(installed):
    """A tiny Llama + tokenizer, a 4-record KnowEdit ZsRE file and a KNE hparams YAML, in the work folder."""
    import tiny_models as tm
    import yaml

    _, _, work, _ = installed
    tok = tm.make_tokenizer()
    model = tm.make_model("llama", tok, num_hidden_layers=2)
    model_dir = work / "tiny-llama"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    records = []
    for i, f in enumerate(tm.FACTS[:4]):
        other = tm.FACTS[(i + 1) % len(tm.FACTS)]
        records.append({"subject": f["subject"], "prompt": f["prompt"], "target_new": f["target_new"],
                        "ground_truth": [f["target_true"]], "rephrase_prompt": f["rephrase_prompt"],
                        "locality": {"Relation_Specificity": [{"prompt": other["prompt"],
                                                               "ground_truth": [other["target_true"]]}]},
                        "portability": {}})
    data = work / "zsre-tiny.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    hparams = work / "kne-tiny.yaml"
    hparams.write_text(yaml.safe_dump({"alg_name": "KNE", "model_name": str(model_dir), "device": "cpu",
                                       "target_modules": ["mlp.down_proj"], "layers": [0, 1], "p": 5.0,
                                       "ig_steps": 4, "num_steps": 4}), encoding="utf-8")
    return model_dir, data, hparams


def test_wheel_ships_hparams_configs_and_the_harness(installed):
    names = set(zipfile.ZipFile(installed[3]).namelist())
    assert {"easyedit_kne/hparams_files/KNE/llama-7b.yaml", "easyedit_kne/hparams_files/FiNE/llama-7b.yaml",
            "easyedit_kne/bench/conf/config.yaml", "easyedit_kne/bench/conf/method/KNE.yaml",
            "easyedit_kne/bench/run_knowedit.py", "easyedit_kne/bench/compare.py",
            "easyedit_kne/bench/speed/suite.py", "easyedit_kne/evaluate/__init__.py",
            "easyedit_kne/__main__.py"} <= names
    shipped = {n for n in names if n.startswith("easyedit_kne/hparams_files/") and n.endswith(".yaml")}
    in_repo = {f"easyedit_kne/hparams_files/{p.relative_to(REPO / 'hparams')}" for p in REPO.glob("hparams/*/*.yaml")}
    assert shipped == in_repo


def test_hparams_list_and_shipped_names(installed):
    bin_dir, env, work, _ = installed
    out = _run(["easyedit-kne", "hparams", "list"], work, env).stdout
    assert "KNE\tllama-7b\t" in out and "FiNE\tllama-7b\t" in out
    assert str(REPO) not in out and "site-packages" in out  # the installed copy, not this checkout
    code = ("from easyedit_kne import KNEHyperParams; from easyedit_kne.fine import FiNEHyperParams; "
            "import easyedit_kne; print(easyedit_kne.__file__); "
            "print(KNEHyperParams.from_hparams('llama-7b').alg_name, "
            "FiNEHyperParams.from_hparams('llama-7b').alg_name)")
    lines = _run([bin_dir / "python", "-c", code], work, env).stdout.split()
    assert "site-packages" in lines[0] and lines[1:] == ["KNE", "FiNE"]
    same = _run([bin_dir / "python", "-m", "easyedit_kne", "hparams", "list"], work, env).stdout
    assert same == out


def test_localize_then_knowedit_one_item(installed, tiny_inputs):
    _, env, work, _ = installed
    model_dir, data, hparams = tiny_inputs
    ensemble = work / "ensemble.safetensors"
    out = _run(["easyedit-kne", "localize", "--hparams", hparams, "--data", data, "--data-type", "zsre",
                "--size", "2", "--out", ensemble], work, env).stdout
    assert ensemble.is_file() and "from 2 items" in out
    run_dir = work / "run"
    _run(["easyedit-kne", "knowedit", "model=path", f"model.path={model_dir}", "data.type=zsre",
          f"data.path={data}", "data.size=1", "localization.size=2", "method.hparams.ig_steps=4",
          "method.hparams.num_steps=4", "method.hparams.p=5", "eval.fluency=false", "progress=false",
          "num_threads=1", f"output_dir={run_dir}"], work, env)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "KNE" and summary["n_cases"] == 1 and summary["complete"]
    cases = (run_dir / "cases.jsonl").read_text().splitlines()
    assert len(cases) == 1 and json.loads(cases[0])["case_id"] == 0
    assert (run_dir / "ensemble.safetensors").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
