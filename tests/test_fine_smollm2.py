"""FiNE on the real SmolLM2-135M-Instruct with hparams/FiNE/smollm2-135m.yaml (slow; needs ../shared), on facts
nobody tuned for (easyedit_kne/bench/heldout.py): the 8 facts of each held-out batch edited one at a time, each
rolled back with weights_copy (EasyEdit's edit()). Teacher-forced target accuracy (EasyEdit's rewrite accuracy)
averages >= 0.9, and on average >= 16 of 20 unrelated prompts keep their greedy 3-token continuation. The model
is bit-identical after the rollbacks."""

import json
import os

import pytest
import torch

from easyedit_kne.bench.heldout import BATCHES, measure_fine_singles

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = os.path.join(REPO, "hparams", "FiNE", "smollm2-135m.yaml")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_fine_heldout_single_edits(smollm2, name):
    from easyedit_kne.fine import FiNEHyperParams

    model, tok = smollm2
    original = {k: v.clone() for k, v in model.state_dict().items()}
    row = measure_fine_singles(model, tok, FiNEHyperParams.from_hparams(YAML), BATCHES[name])
    print(f"\nSmolLM2 FiNE held-out batch {name}: {json.dumps(row)}")
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert row["es"] >= 0.9, row
    assert row["unrelated_kept"] >= 16, row
