"""Reproducibility of the committed results: one case of the committed fixture run
(benchmarks/smollm2-135m/dev/zsre/KNE, 2 DEV items of ZsRE on SmolLM2-135M) is removed from a copy of the run
and re-run with the committed config (the runner's resume check refuses any other config); the recomputed
case must carry the committed metrics: exactly for the teacher-forced ones (rewrite, rephrase, portability,
locality, exact match), and for fluency too, its sampling being seeded per case (eval.seed + case id).
The pre-edit metrics are recomputed as well (an empty pre-edit cache). Needs ../shared (model and data)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "smollm2-135m" / "dev" / "zsre" / "KNE"
DROPPED = ("output_dir", "progress", "pre_eval_dir", "knowedit_dir")


def _needs_shared() -> Path:
    from easyedit_kne.models import find_shared_gguf
    from easyedit_kne.protocol import knowedit_dir

    data = Path(knowedit_dir()) / "zsre" / "ZsRE-test-all.json"
    if find_shared_gguf() is None or not data.is_file():
        pytest.skip("../shared (SmolLM2-135M GGUF and KnowEdit's ZsRE-test-all.json; or EASYEDIT_KNE_SHARED) is "
                    "absent: it re-runs a committed case on the real model")
    return data.parent.parent


def test_committed_case_rerun_gives_the_committed_metrics(tmp_path):
    knowedit = _needs_shared()
    from test_run_knowedit import compose

    from easyedit_kne.bench import run_knowedit as rk

    summary = json.loads((RUN / "summary.json").read_text(encoding="utf-8"))
    committed = {json.loads(line)["case_id"]: json.loads(line)
                 for line in (RUN / "cases.jsonl").read_text(encoding="utf-8").splitlines()}
    assert set(committed) == {200, 201}, "the fixture holds DEV items [200, 202) of ZsRE-test-all"
    case_id = 201
    run = tmp_path / "benchmarks" / "smollm2-135m" / "dev" / "zsre" / "KNE"
    shutil.copytree(RUN, run)
    kept = [line for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines()
            if json.loads(line)["case_id"] != case_id]
    (run / "cases.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    words = shlex.split(summary["command"])
    assert words[:2] == ["easyedit-kne", "knowedit"]
    overrides = [w for w in words[2:] if w.split("=", 1)[0] not in DROPPED]
    overrides += ["progress=false", f"knowedit_dir={knowedit}", f"pre_eval_dir={tmp_path / 'pre_eval'}"]
    rk.run(compose(overrides), output_dir=run)  # refused if the config differs from the committed one
    # the same config, up to hparams fields added to the package since the fixture was written (at their defaults)
    from easyedit_kne.bench.method_base import hparams_defaults
    from easyedit_kne.hparams import KNEHyperParams

    rerun, fixture = (json.loads((p / "run_config.json").read_text())["config"] for p in (run, RUN))
    assert rk.without_added_defaults(fixture, rerun, hparams_defaults(KNEHyperParams(model_name="x"))) == fixture
    again = {json.loads(line)["case_id"]: json.loads(line)
             for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines()}
    new, old = again[case_id], committed[case_id]
    assert new["request"] == old["request"]
    for phase in ("pre", "post"):
        for key in ("rewrite_acc", "rephrase_acc", "portability", "locality", "exact_match"):
            assert new[phase].get(key) == old[phase].get(key), f"{phase}.{key} differs from the committed case"
    assert new["post"]["fluency"] == old["post"]["fluency"], "fluency (seeded per case) differs"
