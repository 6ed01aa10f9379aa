"""The merge in half precision: training sees the update the merge writes (straight-through rounding), the
merged model is evaluated, and an edit the merge lost is trained further on the merged model or reported."""

import pytest
import tiny_models as tm
import torch

from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model
from easyedit_kne import merge as merge_module
from easyedit_kne.merge import SparseUpdate, merge_updates

# many neurons, small steps: each weight entry moves by about one bf16 rounding step, and early stopping
# leaves the loss just below t_loss, where rounding decides whether the edit holds
MARGINAL_HP = dict(model_name="fact-model", ig_steps=4, p=60.0, num_steps=60, lr=0.005, t_loss=0.5)


def _bf16_fact_model():
    fm = tm.fact_model_copy()
    fm.model.to(torch.bfloat16)
    return fm


def _lossy_first_merge(monkeypatch, factor: float = 0.2) -> list:
    """The first merge writes only `factor` of each update: a merge that loses the edit, as rounding can (the
    straight-through hook makes that rare, so it is forced here rather than hoped for)."""
    real = merge_module.merge_updates
    calls = []

    def lossy(model, updates, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            with torch.no_grad():
                for u in updates:
                    u.block.mul_(factor)
        return real(model, updates, *args, **kwargs)

    monkeypatch.setattr(merge_module, "merge_updates", lossy)
    return calls


def test_update_below_half_an_ulp_rounds_away_in_the_hook_too():
    lin = torch.nn.Linear(4, 3, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(1.0)  # bf16 spacing above 1.0 is 2**-7
    block = torch.zeros(2, 3, requires_grad=True)  # "in" axis: columns 0 and 2, one entry per output
    u = SparseUpdate("lin", lin, "in", torch.tensor([0, 2]), block, 1.0)
    with torch.no_grad():
        block[0].fill_(1e-3)  # below half a step: lost by the merge
        block[1].fill_(0.01)  # rounds to one step, 2**-7
    eff = u.effective_block()
    assert torch.equal(eff[0], torch.zeros(3)) and torch.equal(eff[1], torch.full((3,), 2.0 ** -7))
    eff.sum().backward()  # straight through: the gradient reaches every entry of P
    assert torch.equal(block.grad, torch.ones(2, 3))
    x = torch.ones(1, 4, dtype=torch.bfloat16)
    hooked = u.add_to_output(x, lin(x))
    merge_updates(None, [u])
    assert torch.equal(lin(x), hooked)  # the hook saw exactly what the merge wrote
    assert torch.equal(lin.weight[:, 0], torch.ones(3, dtype=torch.bfloat16))
    # an fp32 weight keeps the plain update
    lin32 = torch.nn.Linear(4, 3, bias=False)
    u32 = SparseUpdate("lin", lin32, "in", torch.tensor([0]), torch.full((1, 3), 1e-3), 1.0)
    assert u32.base is None and torch.equal(u32.effective_block(), torch.full((1, 3), 1e-3))


def test_kne_bf16_edit_holds_after_the_merge():
    fm = _bf16_fact_model()
    facts = fm.facts[:2]
    stats = EditStats()
    model, _ = apply_kne_to_model(fm.model, fm.tok, tm.edit_requests(facts), KNEHyperParams(**MARGINAL_HP),
                                  stats=stats)
    assert stats.trained_holds and stats.edit_holds and stats.repair_rounds == 0, stats
    assert stats.merged_loss < MARGINAL_HP["t_loss"]
    # the merged loss is the loss training stopped at, up to the activations' rounding
    assert abs(stats.merged_loss - stats.losses[-1]) < 0.02, (stats.merged_loss, stats.losses[-1])
    assert tm.fact_hits(model, fm.tok, facts, target_key="target_new") == [True, True]


def test_kne_merge_that_loses_the_edit_trains_on_the_merged_model(monkeypatch):
    _lossy_first_merge(monkeypatch)
    fm = _bf16_fact_model()
    facts = fm.facts[:2]
    stats = EditStats()
    apply_kne_to_model(fm.model, fm.tok, tm.edit_requests(facts), KNEHyperParams(**MARGINAL_HP), stats=stats)
    assert stats.repair_rounds >= 1, stats  # this merge did lose the edit (loss back above t_loss)
    assert stats.edit_holds and stats.merged_loss < MARGINAL_HP["t_loss"]
    assert tm.fact_hits(fm.model, fm.tok, facts, target_key="target_new") == [True, True]


def test_edit_lost_by_the_merge_warns_and_weights_copy_still_restores(monkeypatch):
    _lossy_first_merge(monkeypatch)
    monkeypatch.setattr(merge_module, "MAX_REPAIR_ROUNDS", 0)
    fm = _bf16_fact_model()
    original = tm.state_of(fm.model)
    stats = EditStats()
    with pytest.warns(UserWarning, match="held during training but not on the merged torch.bfloat16"):
        model, wc = apply_kne_to_model(fm.model, fm.tok, tm.edit_requests(fm.facts[:2]),
                                       KNEHyperParams(**MARGINAL_HP), return_orig_weights=True, stats=stats)
    assert stats.trained_holds and stats.edit_holds is False and stats.merged_loss >= MARGINAL_HP["t_loss"]
    with torch.no_grad():
        for k, v in wc.items():
            model.get_parameter(k)[...] = v
    assert tm.same_state(model, original)


def test_failure_in_a_repair_round_puts_back_every_round(monkeypatch):
    _lossy_first_merge(monkeypatch)
    fm = _bf16_fact_model()
    original = tm.state_of(fm.model)
    real = merge_module.merge_updates
    calls = []

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "merge_updates", failing_second)
    with pytest.raises(KeyboardInterrupt):
        apply_kne_to_model(fm.model, fm.tok, tm.edit_requests(fm.facts[:2]), KNEHyperParams(**MARGINAL_HP))
    assert len(calls) == 2 and tm.same_state(fm.model, original) and tm.no_hooks(fm.model)
