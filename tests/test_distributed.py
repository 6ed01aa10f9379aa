"""Distributed localization: 2 gloo processes under torchrun give the same ensemble as 1 process, and every
request's scores land in the cache."""

import json
import os
import subprocess
import sys

import tiny_models

from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(tmp_path):
    tok = tiny_models.make_tokenizer()
    model = tiny_models.make_model("llama", tok)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    facts = tiny_models.get_fact_model().facts[:5]
    records = [{"subject": f["subject"], "prompt": f["prompt"], "target_new": f["target_new"],
                "ground_truth": [f["target_true"]]} for f in facts]
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    return folder, data


def _hparams(tmp_path, folder, cache):
    path = tmp_path / f"hp-{cache}.yaml"
    path.write_text(f"alg_name: KNE\nmodel_name: {folder}\nig_steps: 2\np: 5\nscore_aggregation: max\n"
                    f"cache_dir: {tmp_path / cache}\n", encoding="utf-8")
    return path


def _run(cmd):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_gloo_processes_give_the_one_process_ensemble(tmp_path):
    folder, data = _setup(tmp_path)
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    args = ["localize", "--data", str(data), "--data-type", "zsre", "--size", "5"]
    _run([sys.executable, "-m", "easyedit_kne.cli", *args, "--hparams", str(_hparams(tmp_path, folder, "c1")),
          "--out", str(one)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "easyedit_kne.cli", *args, "--hparams", str(_hparams(tmp_path, folder, "c2")), "--out", str(two)])
    a, b = KnowledgeNeuronalEnsemble.load(one), KnowledgeNeuronalEnsemble.load(two)
    assert a.num_neurons > 0
    assert {k: v.tolist() for k, v in a.neurons.items()} == {k: v.tolist() for k, v in b.neurons.items()}
    assert b.metadata["world_size"] == 2
    assert len(list((tmp_path / "c2").rglob("*.safetensors"))) == 5  # every request's scores, once
