"""kept_flags: requires_grad and train/eval mode restored on every exit; freeze=True freezes meanwhile."""

import pytest
import torch

from easyedit_kne.model_flags import kept_flags


def _model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a mixed set of flags
    model.train()
    return model


def _flags(model):
    return [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("freeze", [False, True])
def test_flags_and_mode_restored_after_changes_and_errors(freeze):
    model = _model()
    before = _flags(model)
    with pytest.raises(KeyError):
        with kept_flags(model, freeze=freeze):
            if freeze:
                assert not any(_flags(model)) and not model.training
            else:
                assert _flags(model) == before and model.training
            for p in model.parameters():
                p.requires_grad_(not freeze)
            model.train(freeze)
            raise KeyError("inside")
    assert _flags(model) == before and model.training


def test_weights_copy_method_keeps_flags_and_restores_weights():
    from easyedit_kne.bench.method_base import WeightsCopyMethod

    def apply_fn(model, tok, requests, hparams, **kwargs):  # an FT-like apply: trains in train mode, in place
        original = {"0.weight": model[0].weight.detach().clone()}
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            model[0].weight.add_(1.0)
        return model, original

    class Method(WeightsCopyMethod):
        pass

    Method.apply_fn = staticmethod(apply_fn)
    model = _model().eval()
    before, weight = _flags(model), model[0].weight.detach().clone()
    result = Method("ft", None, "test").edit(model, None, [])
    assert _flags(model) == before and not model.training
    assert not torch.equal(model[0].weight, weight)
    assert result.restore() is model and torch.equal(model[0].weight, weight)
