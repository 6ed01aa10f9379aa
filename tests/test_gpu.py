"""GPU tests (marker `gpu`; `pytest -m gpu`, run by scripts/gpu_check.sh): KNE on a CUDA device with the tiny fact
model, in half precision. Without a CUDA device they skip with a reason; the last test (not marked gpu) checks
that scripts/gpu_check.sh says so and exits 77 on a machine without one.

KNE_GPU_TEST_DEVICE=cpu runs them on the CPU instead (bf16/fp16 on CPU), to check the tests themselves on a
machine without a GPU; the default is cuda.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tm
import torch

from easyedit_kne import Edit, EditStats, KNEHyperParams, apply_kne_to_model
from easyedit_kne.attribution import attribute_request
from easyedit_kne.edit_artifact import same_bits
from easyedit_kne.modules import targets_from_hparams

DEVICE = os.environ.get("KNE_GPU_TEST_DEVICE", "cuda")
REPO = Path(__file__).resolve().parent.parent
_skip = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                           reason="no CUDA device (KNE_GPU_TEST_DEVICE=cpu runs these tests on the CPU)")


def needs_gpu(test):
    return pytest.mark.gpu(_skip(test))


# more steps than the fp32 tests (40): in bf16 the loss goes below t_loss later
EDIT_HP = dict(model_name="fact-model", ig_steps=8, p=5.0, num_steps=150, lr=0.02, t_loss=0.2)


def fact_model_on(dtype: torch.dtype):
    fm = tm.get_fact_model()
    return copy.deepcopy(fm.model).to(DEVICE, dtype), fm.tok, fm.facts


def bits(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, state) -> bool:
    return all(same_bits(v, state[k]) for k, v in model.state_dict().items())


@needs_gpu
def test_bf16_kne_edit_holds_after_the_merge():
    model, tok, facts = fact_model_on(torch.bfloat16)
    edited, kept = facts[:4], facts[4:]
    before_kept = tm.fact_hits(model, tok, kept)
    stats = EditStats()
    out, _ = apply_kne_to_model(model, tok, tm.edit_requests(edited), KNEHyperParams(**EDIT_HP), stats=stats)
    assert out is model and next(model.parameters()).device.type == torch.device(DEVICE).type
    assert model.dtype == torch.bfloat16 and tm.no_hooks(model)
    # checked on the merged bf16 weights (merge.py), not only with the training hooks
    assert stats.edit_holds is True, (stats.merged_accuracy, stats.merged_min_prob, stats.repair_rounds)
    assert stats.merged_accuracy == 1.0
    assert all(tm.fact_hits(model, tok, edited, target_key="target_new"))
    after_kept = tm.fact_hits(model, tok, kept)
    still = sum(a and b for a, b in zip(before_kept, after_kept, strict=True)) / max(1, sum(before_kept))
    assert still >= 0.8, still


def _flat(scores):
    return torch.cat([scores[n].float().cpu() for n in sorted(scores)])


def _corr(a, b) -> float:
    return float(torch.corrcoef(torch.stack([_flat(a), _flat(b)]))[0, 1])


@needs_gpu
def test_fp16_attribution_correlates_with_fp32():
    model32, tok, facts = fact_model_on(torch.float32)
    model16 = copy.deepcopy(model32).half()
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.up_proj", "mlp.down_proj"])
    for fact in facts[:3]:
        request = {"prompt": fact["prompt"], "target_new": fact["target_new"]}
        ref = attribute_request(model32, tok, request, targets_from_hparams(model32, hp), 8, 40)
        half = attribute_request(model16, tok, request, targets_from_hparams(model16, hp), 8, 40)
        assert _corr(half, ref) > 0.99
    # and fp32 on this device agrees with fp32 on the CPU
    cpu = copy.deepcopy(tm.get_fact_model().model).float()
    on_cpu = attribute_request(cpu, tok, request, targets_from_hparams(cpu, hp), 8, 40)
    assert _corr(ref, on_cpu) > 0.9999


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_edit_file_round_trip(tmp_path, dtype):
    model, tok, facts = fact_model_on(dtype)
    base = bits(model)
    fresh = copy.deepcopy(model)
    _, _, edit = apply_kne_to_model(model, tok, tm.edit_requests(facts[:2]), KNEHyperParams(**EDIT_HP),
                                    return_edit=True)
    edited = bits(model)
    assert not same(fresh, edited)
    path = tmp_path / "edit.safetensors"
    edit.save(path)
    loaded = Edit.load(path)
    assert loaded.dtype == dtype and loaded.num_neurons == edit.num_neurons
    loaded.apply(fresh)  # onto an unedited copy on the device: bit-identical to the edited model
    assert same(fresh, edited)
    assert all(tm.fact_hits(fresh, tok, facts[:2], target_key="target_new"))
    loaded.revert(model)  # the edited model back to the base, bit for bit
    assert same(model, base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script on a machine without a CUDA device")
def test_gpu_check_script_without_cuda_says_so_and_exits_77(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("GPU_CHECK_DEVICE", None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout and "nothing was run" in proc.stdout
    assert "no CUDA device" in (tmp_path / "summary.txt").read_text()
    assert not (tmp_path / "pytest-gpu.xml").exists()
