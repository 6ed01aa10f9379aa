"""apply_kne_to_model: edits change known facts, keep others, follow EasyEdit's contract exactly."""

import pytest
import tiny_models as tm
import torch

from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model, localize
from easyedit_kne.tokens import encode_requests

EDIT_HP = dict(model_name="fact-model", ig_steps=8, p=5.0, num_steps=40, lr=0.02, t_loss=0.2)


_requests = tm.edit_requests
_state = tm.state_of
_same = tm.same_state
_no_hooks = tm.no_hooks


def test_batch_edit_changes_facts_and_keeps_others(fact_model_copy):
    fm = fact_model_copy
    edited, kept = fm.facts[:4], fm.facts[4:]
    before_kept = tm.fact_hits(fm.model, fm.tok, kept)
    hp = KNEHyperParams(**EDIT_HP)
    stats = EditStats()
    model, weights_copy = apply_kne_to_model(fm.model, fm.tok, _requests(edited), hp, stats=stats)
    assert model is fm.model and weights_copy == {}
    success = tm.fact_hits(model, fm.tok, edited, target_key="target_new")
    assert sum(success) == len(edited), stats.losses
    after_kept = tm.fact_hits(model, fm.tok, kept)
    still = sum(a and b for a, b in zip(before_kept, after_kept, strict=True)) / max(1, sum(before_kept))
    assert still >= 0.8, still
    assert stats.losses[-1] < stats.losses[0] and stats.num_neurons > 0
    assert _no_hooks(model)


def test_weights_copy_restores_bit_for_bit(fact_model_copy):
    fm = fact_model_copy
    original = _state(fm.model)
    names = {n for n, _ in fm.model.named_parameters()}
    hp = KNEHyperParams(**EDIT_HP)
    model, weights_copy = apply_kne_to_model(fm.model, fm.tok, _requests(fm.facts[:2]), hp,
                                             return_orig_weights=True)
    assert weights_copy and set(weights_copy) <= names
    assert all(k.endswith("mlp.down_proj.weight") for k in weights_copy)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed == set(weights_copy)
    with torch.no_grad():
        for k, v in weights_copy.items():
            model.get_parameter(k)[...] = v
    assert _same(model, original)
    # same modules and parameters as before: nothing added, nothing left requiring a hook
    assert {n for n, _ in model.named_parameters()} == names and _no_hooks(model)


def test_copy_leaves_input_model_untouched(fact_model_copy):
    fm = fact_model_copy
    original = _state(fm.model)
    model, _ = apply_kne_to_model(fm.model, fm.tok, _requests(fm.facts[:1]), KNEHyperParams(**EDIT_HP), copy=True)
    assert model is not fm.model and _same(fm.model, original) and not _same(model, original)


def test_sequential_edits_accumulate(fact_model_copy):
    fm = fact_model_copy
    hp = KNEHyperParams(**EDIT_HP)
    first, second = fm.facts[0], fm.facts[1]
    apply_kne_to_model(fm.model, fm.tok, _requests([first]), hp)
    apply_kne_to_model(fm.model, fm.tok, _requests([second]), hp)
    assert tm.fact_hits(fm.model, fm.tok, [first, second], target_key="target_new") == [True, True]


def test_precomputed_ensemble_object_and_path(fact_model_copy, tmp_path):
    fm = fact_model_copy
    hp = KNEHyperParams(**EDIT_HP)
    localization = _requests(fm.facts[10:16])
    ens = localize(fm.model, fm.tok, localization, hp, progress=False)
    path = tmp_path / "ens.safetensors"
    ens.save(path)
    stats = EditStats()
    _, wc = apply_kne_to_model(fm.model, fm.tok, _requests(fm.facts[:1]), hp, ensemble=ens,
                               return_orig_weights=True, stats=stats)
    assert stats.localize_seconds == 0.0 and stats.num_neurons == ens.num_neurons
    assert {k[: -len(".weight")] for k in wc} == set(ens.neurons)
    hp_path = KNEHyperParams(**EDIT_HP, ensemble_path=str(path))
    stats2 = EditStats()
    apply_kne_to_model(fm.model, fm.tok, _requests(fm.facts[1:2]), hp_path, stats=stats2)
    assert stats2.localize_seconds == 0.0 and stats2.num_neurons == ens.num_neurons


@pytest.mark.parametrize("which", ["value", "key"])
def test_every_architecture_edits(arch_model, which):
    model = tm.make_model(arch_model.name, arch_model.tok)
    module = arch_model.value_module if which == "value" else arch_model.key_module
    hp = KNEHyperParams(model_name="x", target_modules=[module], ig_steps=3, p=20, num_steps=15, lr=0.1)
    original = _state(model)
    requests = [{"prompt": "The capital of Velaria is", "target_new": "Morn"}]
    stats = EditStats()
    model, wc = apply_kne_to_model(model, arch_model.tok, requests, hp, return_orig_weights=True, stats=stats)
    assert stats.losses[-1] < stats.losses[0]
    assert _no_hooks(model)
    with torch.no_grad():
        for k, v in wc.items():
            model.get_parameter(k)[...] = v
    assert _same(model, original)


def test_merged_weights_equal_the_hooked_model(tiny_gpt2, tiny_tok):
    """The merge writes exactly the update the hook applied (Conv1D storage handled)."""
    import copy

    model = copy.deepcopy(tiny_gpt2)
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.c_proj", "mlp.c_fc"], ig_steps=2, p=30,
                        num_steps=5, lr=0.1, t_loss=0.0)
    from easyedit_kne.hooks import Hooks
    from easyedit_kne.kne_main import _hook, build_updates, merge_updates, train_updates

    requests = [{"prompt": "The capital of Velaria is", "target_new": "Morn"}]
    ens = localize(model, tiny_tok, requests, hp, progress=False)
    updates = build_updates(model, ens, hp.alpha)
    batch = encode_requests(tiny_tok, requests, 40)
    train_updates(model, batch, updates, hp, EditStats())
    with torch.no_grad(), Hooks() as hooks:
        for u in updates:
            hooks.forward(u.module, _hook(u))
        hooked = model(input_ids=batch.input_ids).logits
    merge_updates(model, updates)
    with torch.no_grad():
        merged = model(input_ids=batch.input_ids).logits
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(fact_model_copy, dtype):
    """In bf16/fp16 the edit holds on the merged weights (not only in the fp32 hook), with the fixture's
    trained tokenizer; weights_copy restores the model."""
    fm = fact_model_copy
    model = fm.model.to(dtype)
    facts = fm.facts[:2]
    hp = KNEHyperParams(**dict(EDIT_HP, t_loss=0.5))
    original = _state(model)
    stats = EditStats()
    model, wc = apply_kne_to_model(model, fm.tok, _requests(facts), hp, return_orig_weights=True, stats=stats)
    assert all(v.dtype == dtype for v in wc.values())
    assert all(p.dtype == dtype for p in model.parameters())
    assert stats.trained_holds and stats.edit_holds, stats
    assert stats.merged_loss < hp.t_loss and stats.merged_accuracy == 1.0
    assert tm.fact_hits(model, fm.tok, facts, target_key="target_new") == [True, True]
    with torch.no_grad():
        for k, v in wc.items():
            model.get_parameter(k)[...] = v
    assert _same(model, original)
