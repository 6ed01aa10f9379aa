"""Less waste per attribution pass: several requests share a pass (padded) with the same scores as one at a
time, and parameters stay frozen during attribution, their flags restored on every exit."""

import pytest
import torch

from easyedit_kne import KNEHyperParams
from easyedit_kne.attribution import attribute_per_request, attribute_request, attribute_requests
from easyedit_kne.modules import targets_from_hparams

REQUESTS = [{"prompt": "The capital of Velaria is", "target_new": "Morn"},
            {"prompt": "Zentor is led by", "target_new": "Alice Bob"},  # shorter prompt, longer target
            {"prompt": "The favorite color of the old company Plexa is", "target_new": "red"}]


@pytest.mark.parametrize("method", ["riemann_right", "gausslegendre"])
def test_several_requests_in_one_pass_equal_one_at_a_time(arch_model, method):
    model, tok = arch_model.model, arch_model.tok
    hp = KNEHyperParams(model_name="x", target_modules=[arch_model.value_module, arch_model.key_module])
    targets = targets_from_hparams(model, hp)
    lengths = {len(tok(r["prompt"] + " " + r["target_new"])["input_ids"]) for r in REQUESTS}
    assert len(lengths) == 3  # padding is really exercised
    together = attribute_requests(model, tok, REQUESTS, targets, 3, 40, batch_size=9, method=method)
    for request, got in zip(REQUESTS, together, strict=True):
        alone = attribute_request(model, tok, request, targets, 3, 40, batch_size=64, method=method)
        for name in alone:
            torch.testing.assert_close(got[name], alone[name], rtol=1e-4, atol=1e-6 * alone[name].abs().max())


def test_per_request_order_and_grouping(tiny_llama, tiny_tok):
    """attribute_per_request groups requests by length; the results come back in the caller's order."""
    grouped = attribute_per_request(tiny_llama, tiny_tok, REQUESTS, KNEHyperParams(model_name="x", ig_steps=2,
                                    ig_request_batch=3), progress=False)
    single = attribute_per_request(tiny_llama, tiny_tok, REQUESTS, KNEHyperParams(model_name="x", ig_steps=2,
                                   ig_request_batch=1), progress=False)
    for a, b in zip(grouped, single, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7)


def _trainable_copy(tiny_tok):
    import tiny_models

    model = tiny_models.make_model("llama", tiny_tok)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # a mixed set of flags to restore
    return model


def test_parameters_frozen_during_attribution_and_restored(tiny_tok):
    model = _trainable_copy(tiny_tok)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []
    handle = model.model.layers[1].register_forward_hook(
        lambda mod, args, out: seen.append(any(p.requires_grad for p in model.parameters())))
    attribute_per_request(model, tiny_tok, REQUESTS[:2], KNEHyperParams(model_name="x", ig_steps=2), progress=False)
    handle.remove()
    assert seen and not any(seen)  # no parameter required grad in any forward of the attribution
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_flags_restored_when_attribution_fails(tiny_tok):
    model = _trainable_copy(tiny_tok)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    def boom(mod, args, out):
        raise KeyboardInterrupt

    handle = model.model.layers[1].register_forward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        attribute_per_request(model, tiny_tok, REQUESTS[:1], KNEHyperParams(model_name="x", ig_steps=2),
                              progress=False)
    handle.remove()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(not m._forward_pre_hooks and len(m._forward_hooks) == 0 for m in model.modules())
