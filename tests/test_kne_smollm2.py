"""Quality on a real model, on facts nobody tuned for: a batch of 8 counterfactual edits of well-known facts on
SmolLM2-135M with the shipped hparams/KNE/smollm2-135m.yaml, for each held-out batch of
easyedit_kne/bench/heldout.py (never used to choose any hparams). The bar is the project's batch-edit target:
edit success >= 0.95, >= 18 of 20 unrelated prompts and >= 3 of 4 same-relation neighbours keep their greedy
3-token continuation. The numbers are printed (and `python -m easyedit_kne.bench.heldout` prints them as JSON)."""

import json
import os

import pytest

from easyedit_kne import KNEHyperParams
from easyedit_kne.bench.heldout import BATCHES, measure_kne_batch
from easyedit_kne.models import find_shared_gguf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    if find_shared_gguf() is None:
        pytest.skip("../shared/models/SmolLM2-135M-Instruct-Q4_1-gguf is absent: the real-model test needs it")
    from easyedit_kne.models import load_model

    return load_model("smollm2-135m")


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_batch_of_8_heldout_counterfactual_edits(smollm2, name):
    model, tok = smollm2
    hp = KNEHyperParams.from_hparams(os.path.join(REPO, "hparams", "KNE", "smollm2-135m.yaml"))
    row = measure_kne_batch(model, tok, hp, BATCHES[name])
    print(f"\nSmolLM2 KNE held-out batch {name}: {json.dumps(row)}")
    assert row["es_before"] < 0.2  # the model knows the true answers
    assert row["es"] >= 0.95, row
    assert row["unrelated_kept"] >= 18, row
    assert row["neighbours_kept"] >= 3, row
