"""Sequential runs evaluated at checkpoints (easyedit_kne/bench/checkpoints.py), on the runner's tiny model: the
checkpoint folders hold what separate runs of those sizes write, a run killed after a checkpoint goes on from it,
and bad settings are refused before any edit."""

from __future__ import annotations

import json

import pytest
from test_run_knowedit import read_cases, run, tiny_run_inputs  # noqa: F401  (tiny_run_inputs: a fixture)

from easyedit_kne.bench import method_base

SEQ = ("edit_mode=sequential", "batch_size=1")


def _posts(out):
    return {c["case_id"]: c["post"] for c in read_cases(out)}


def _sha(out):
    return json.loads((out / "run_config.json").read_text())["sha256"]


def _count_edits(monkeypatch, fail_at: int | None = None) -> list:
    calls = []
    original = method_base.WeightsCopyMethod.edit

    def counted(self, *args, **kwargs):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(method_base.WeightsCopyMethod, "edit", counted)
    return calls


def test_checkpoints_write_what_separate_runs_write(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    separate = {t: run(tiny_run_inputs, tmp_path / "alone" / f"T={t}", *SEQ, f"data.size={t}") for t in (1, 2)}
    calls = _count_edits(monkeypatch)
    final = run(tiny_run_inputs, tmp_path / "stream" / "T=4", *SEQ, "checkpoints=[1,2]")
    assert len(calls) == 4  # one stream of 4 edits gives T = 1, 2 and 4
    assert final["n_cases"] == 4 and final["complete"]
    for t in (1, 2):
        ck, alone = tmp_path / "stream" / f"T={t}", tmp_path / "alone" / f"T={t}"
        assert _posts(ck) == _posts(alone) and sorted(_posts(ck)) == list(range(t))
        assert _sha(ck) == _sha(alone)  # the run config of data.size=T: such a run resumes it
        summary = json.loads((ck / "summary.json").read_text())
        assert summary["complete"] and summary["n_cases"] == t and summary["data"]["size"] == t
        assert summary["Edit Succ."] == separate[t]["Edit Succ."]
        assert summary["checkpoint_of"]["size"] == 4
    # a separate run of size 2 into the checkpoint folder finds nothing to do
    calls.clear()
    again = run(tiny_run_inputs, tmp_path / "stream" / "T=2", *SEQ, "data.size=2")
    assert calls == [] and again["n_cases"] == 2


def test_a_stream_killed_after_a_checkpoint_goes_on_from_it(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    whole = run(tiny_run_inputs, tmp_path / "whole" / "T=4", *SEQ, "checkpoints=[2]")
    out = tmp_path / "killed" / "T=4"
    _count_edits(monkeypatch, fail_at=4)  # killed during the 4th edit, after checkpoint 2 was written
    with pytest.raises(KeyboardInterrupt):
        run(tiny_run_inputs, out, *SEQ, "checkpoints=[2]")
    assert sorted(_posts(out.parent / "T=2")) == [0, 1] and not (out / "cases.jsonl").exists()
    calls = _count_edits(monkeypatch)
    resumed = run(tiny_run_inputs, out, *SEQ, "checkpoints=[2]")
    assert len(calls) == 2  # edits 3 and 4 only: edits 1 and 2 come from the state saved at the checkpoint
    assert _posts(out) == _posts(tmp_path / "whole" / "T=4")
    assert _posts(out.parent / "T=2") == _posts(tmp_path / "whole" / "T=2")
    assert resumed["Edit Succ."] == whole["Edit Succ."]


def test_a_checkpoint_missed_by_a_finished_stream_warns(tiny_run_inputs, tmp_path):  # noqa: F811
    out = tmp_path / "T=4"
    run(tiny_run_inputs, out, *SEQ, "checkpoints=[1]")
    (tmp_path / "T=1" / "cases.jsonl").unlink()
    with pytest.warns(UserWarning, match="checkpoint T=1 .* past it"):
        run(tiny_run_inputs, out, *SEQ, "checkpoints=[1]")


@pytest.mark.parametrize("extra, match", [
    (("edit_mode=single", "checkpoints=[1]"), "set edit_mode=sequential"),
    ((*SEQ, "checkpoints=[4]"), "not below the run's 4 items"),
    (("edit_mode=sequential", "batch_size=2", "checkpoints=[1]"), "not a multiple of batch_size=2"),
    ((*SEQ, "checkpoints=[0]"), "not a number of items"),
    ((*SEQ, "checkpoints=[1,1]"), "given twice"),
    ((*SEQ, "checkpoints=[1]", "checkpoint_dir=ckpt"), "must contain {T}"),
])
def test_bad_checkpoints_are_refused_before_any_edit(tiny_run_inputs, tmp_path, monkeypatch, extra, match):  # noqa: F811
    calls = _count_edits(monkeypatch)
    with pytest.raises(ValueError, match=match):
        run(tiny_run_inputs, tmp_path / "T=4", *extra)
    assert calls == [] and not (tmp_path / "T=4" / "cases.jsonl").exists()


def test_a_checkpoint_folder_with_another_config_is_refused(tiny_run_inputs, tmp_path, monkeypatch):  # noqa: F811
    run(tiny_run_inputs, tmp_path / "T=1", *SEQ, "data.size=1", "method.hparams.p=10")
    calls = _count_edits(monkeypatch)
    with pytest.raises(ValueError, match="another config"):
        run(tiny_run_inputs, tmp_path / "T=4", *SEQ, "checkpoints=[1]")
    assert calls == [] and not (tmp_path / "T=4" / "cases.jsonl").exists()
