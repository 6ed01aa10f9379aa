"""Guards for models met in practice: a forward that never calls get_output_embeddings() (remote-code
models computing the head themselves), and weights offloaded by a device_map (on the meta device)."""

import copy

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
import transformers
from transformers.modeling_outputs import CausalLMOutput

from easyedit_kne import KNEHyperParams, apply_kne_to_model, localize
from easyedit_kne.fine import FiNEHyperParams, apply_fine_to_model

HP = dict(model_name="fact-model", ig_steps=4, p=5.0, num_steps=40, lr=0.02, t_loss=0.2)


class HeadBypassLlama(transformers.LlamaForCausalLM):
    """Computes the logits from lm_head's weight without calling the lm_head module (so no hook on it runs).
    `drop` removes that many positions from the logits (a model whose logits cannot be matched)."""

    drop = 0

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, **kwargs):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = F.linear(h, self.lm_head.weight)
        return CausalLMOutput(logits=logits[:, self.drop:])


def _bypass_copy(fm, drop=0):
    model = HeadBypassLlama(fm.model.config)
    model.load_state_dict(fm.model.state_dict())
    model.drop = drop
    return model.eval()


def test_head_bypassing_model_edits_like_the_original(fact_model_copy):
    fm = fact_model_copy
    facts = fm.facts[:2]
    bypass = _bypass_copy(fm)
    reference = copy.deepcopy(fm.model)
    hp = KNEHyperParams(**HP)
    # one ensemble for both (localization has its own pre-hook, see attribution.py); here training is tested
    ensemble = localize(reference, fm.tok, tm.edit_requests(facts), hp)
    apply_kne_to_model(reference, fm.tok, tm.edit_requests(facts), hp, ensemble=ensemble)
    apply_kne_to_model(bypass, fm.tok, tm.edit_requests(facts), hp, ensemble=ensemble)
    assert tm.fact_hits(bypass, fm.tok, facts, target_key="target_new") == [True, True]
    for name, p in reference.named_parameters():  # the same positions were read: the same edit
        torch.testing.assert_close(bypass.get_parameter(name), p, rtol=1e-4, atol=1e-6)


def test_logits_of_an_unexpected_length_are_a_clear_error(fact_model_copy):
    fm = fact_model_copy
    model = _bypass_copy(fm, drop=1)
    original = tm.state_of(model)
    hp = KNEHyperParams(**HP)
    ensemble = localize(fm.model, fm.tok, tm.edit_requests(fm.facts[:1]), hp)
    with pytest.raises(RuntimeError, match="returned logits for .* get_output_embeddings"):
        apply_kne_to_model(model, fm.tok, tm.edit_requests(fm.facts[:1]), hp, ensemble=ensemble)
    assert tm.same_state(model, original) and tm.no_hooks(model)


def _meta(model, names):
    for name in names:
        mod = model.get_submodule(name)
        mod.weight = torch.nn.Parameter(torch.empty_like(mod.weight, device="meta"), requires_grad=False)


def test_offloaded_target_weight_is_a_clear_error_before_any_change(tiny_tok):
    model = tm.make_model("llama", tiny_tok)
    _meta(model, ["model.layers.1.mlp.down_proj"])
    original = {k: v.clone() for k, v in model.state_dict().items() if v.device.type != "meta"}
    request = [{"prompt": "Kiva speaks", "target_new": "Dutch"}]
    with pytest.raises(ValueError, match=r"KNE: the weight of model.layers.1.mlp.down_proj is offloaded.*"
                                         r"without offload"):
        apply_kne_to_model(model, tiny_tok, request, KNEHyperParams(model_name="x", ig_steps=2))
    with pytest.raises(ValueError, match=r"FiNE: the weight of model.layers.1.mlp.down_proj is offloaded"):
        apply_fine_to_model(model, tiny_tok, request, FiNEHyperParams(model_name="x", last_layer=0))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_accelerate_cpu_offload_is_a_clear_error(tiny_tok):
    accelerate = pytest.importorskip("accelerate")
    model = tm.make_model("llama", tiny_tok)
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.model.layers[0].mlp.down_proj.weight.device.type == "meta"
    with pytest.raises(ValueError, match="offloaded .*meta device"):
        apply_kne_to_model(model, tiny_tok, [{"prompt": "Kiva speaks", "target_new": "Dutch"}],
                           KNEHyperParams(model_name="x", ig_steps=2))
