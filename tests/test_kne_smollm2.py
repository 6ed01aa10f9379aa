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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


# Measured with the shipped YAML (1 thread, 2026-12-03): batch A edit success 1.00, 14/20 unrelated and 1/4
# neighbours kept; batch B 1.00, 14/20, 3/4. The YAML before the dev-split tuning: A 0.94, 15/20, 2/4; B 0.88,
# 14/20, 3/4. The authors' settings: A 0.94, 12/20, 0/4; B 1.00, 10/20, 2/4.
# The target is not met yet (issue: KNE at its best on facts nobody tuned for). The test still runs the edit and
# checks everything else; a missed target is reported as xfail with the measured numbers, and a met target makes
# the test FAIL with a request to set TARGET_MET_YET (so the bar cannot silently drop).
TARGET_MET_YET = False


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_batch_of_8_heldout_counterfactual_edits(smollm2, name):
    model, tok = smollm2
    hp = KNEHyperParams.from_hparams(os.path.join(REPO, "hparams", "KNE", "smollm2-135m.yaml"))
    row = measure_kne_batch(model, tok, hp, BATCHES[name])
    print(f"\nSmolLM2 KNE held-out batch {name}: {json.dumps(row)}")
    assert row["es_before"] < 0.2, row  # the model knows the true answers: a failure here is not the xfail
    assert row["es"] > row["es_before"] + 0.5, row  # the edit happened
    met = row["es"] >= 0.95 and row["unrelated_kept"] >= 18 and row["neighbours_kept"] >= 3
    if met != TARGET_MET_YET:
        pytest.fail(f"batch-edit target met on held-out batch {name}: set TARGET_MET_YET = True ({row})" if met
                    else f"batch-edit target no longer met on held-out batch {name}: {row}")
    if not met:
        pytest.xfail(f"batch-edit target (ES >= 0.95, >= 18/20 unrelated, >= 3/4 neighbours) not met: {row}")
