"""FiNE against the authors' code (github.com/opanhw/FiNE): their YAML fields and alg_name, locate in eval
mode, one delta per (token, neuron) pair, GPT-J prompts prefixed with <|endoftext|>."""

import pytest
import tiny_models as tm
import torch
import yaml

from easyedit_kne.fine import FiNEHyperParams, fine_main
from easyedit_kne.fine.locate import locate
from easyedit_kne.tokens import encode_requests

AUTHORS_STYLE = {  # the fields of their hparams/FINE/llama2-7b.yaml
    "alg_name": "FINE", "model_name": "./Llama-2-7b-hf", "device": 0, "epochs": 50, "lr": "5e-3", "gamma": 0.1,
    "beta": 10, "alpha": 1, "neuron_num": 5, "early_stop_prob": 0.9, "last_layer": 3,
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
    "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
    "ln_f_module": "model.norm", "lm_head_module": "lm_head", "model_parallel": True, "fp16": True,
}


def test_authors_yaml_loads(tmp_path):
    path = tmp_path / "fine.yaml"
    path.write_text(yaml.safe_dump(AUTHORS_STYLE))
    hp = FiNEHyperParams.from_hparams(path)
    assert hp.alg_name == "FINE" and hp.value_module == "mlp.down_proj" and hp.lr == 5e-3 and hp.last_layer == 3
    from easyedit_kne.easyedit import BATCHABLE_METHODS, _our_methods
    assert _our_methods()["FINE"] is _our_methods()["FiNE"] and "FINE" in BATCHABLE_METHODS
    for bad, field in [({"random": True}, "random"), ({"layer": 7}, "layer"),
                       ({"value_module": "mlp.up_proj"}, "contradicts"), ({"alg_name": "ROME"}, "alg_name")]:
        path.write_text(yaml.safe_dump({**AUTHORS_STYLE, **bad}))
        with pytest.raises(ValueError, match=field):
            FiNEHyperParams.from_hparams(path)


def test_locate_runs_in_eval_mode(tiny_tok):
    model = tm.make_model("llama", tiny_tok, attention_dropout=0.9)
    request = [{"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk"}]
    hp = FiNEHyperParams(model_name="x", last_layer=0, neuron_num=3)
    reference = locate(model, tiny_tok, request, hp)
    model.train()
    torch.manual_seed(1)
    in_train = locate(model, tiny_tok, request, hp)
    assert model.training  # restored
    assert torch.equal(in_train.logits, reference.logits) and torch.equal(in_train.top[0], reference.top[0])


def test_one_delta_per_token_and_neuron_like_the_authors(tiny_tok):
    """A neuron chosen for two target tokens gets two deltas: one Adam step then moves its value vector by the
    sum of two steps, as with the authors' per-token deltas (and unlike one delta per neuron)."""
    model = tm.make_model("llama", tiny_tok)
    request = [{"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk"}]
    hp = FiNEHyperParams(model_name="x", last_layer=0, neuron_num=40, lr=0.01, epochs=1, early_stop_prob=None)
    loc = locate(model, tiny_tok, request, hp)
    updates = fine_main.build_fine_updates(loc)
    n_pairs = loc.top[0].shape[0] * hp.neuron_num
    assert sum(u.block.shape[0] for u in updates) == n_pairs
    shared = [u for u in updates if u.block.shape[0] > len(u.index)]
    assert shared, "no neuron chosen for two tokens: the test would not tell the parameterizations apart"
    batch = encode_requests(tiny_tok, request, 40)
    fine_main.train_fine(model, batch, loc, updates, hp, fine_main.FiNEStats())
    u = shared[0]
    counts = u.combine.sum(1)
    step = u.delta().detach().abs().amax(1)  # Adam's first step moves every entry by lr (sign of its gradient)
    moved = step > 0
    torch.testing.assert_close(step[moved], hp.lr * counts[moved], rtol=1e-3, atol=1e-6)
    assert bool((counts[moved] > 1).any())


def test_delta_per_neuron_keeps_one_delta_per_unique_neuron(tiny_tok):
    """delta_per="neuron" (the earlier behaviour, kept for the ablation): one delta per unique neuron, so one
    Adam step moves every value vector by lr at most, shared neurons included."""
    model = tm.make_model("llama", tiny_tok)
    request = [{"prompt": "The capital of Velaria is", "target_new": "Morn Tarsk"}]
    hp = FiNEHyperParams(model_name="x", last_layer=0, neuron_num=40, lr=0.01, epochs=1, early_stop_prob=None,
                         delta_per="neuron")
    loc = locate(model, tiny_tok, request, hp)
    updates = fine_main.build_fine_updates(loc, hp.delta_per)
    assert sum(u.block.shape[0] for u in updates) == loc.num_neurons < loc.top[0].shape[0] * hp.neuron_num
    assert all(u.combine is None for u in updates)
    fine_main.train_fine(model, encode_requests(tiny_tok, request, 40), loc, updates, hp, fine_main.FiNEStats())
    step = torch.cat([u.delta().detach().abs().amax(1) for u in updates])
    assert float(step.max()) == pytest.approx(hp.lr, rel=1e-3)
    with pytest.raises(ValueError, match="delta_per"):
        FiNEHyperParams(model_name="x", delta_per="pair")


def test_gptj_prompts_start_with_endoftext(tiny_tok):
    gptj, llama = tm.make_model("gptj", tiny_tok), tm.make_model("llama", tiny_tok)
    assert fine_main.prompt_prefix(gptj, tiny_tok) == [tiny_tok.eos_token_id]
    assert fine_main.prompt_prefix(llama, tiny_tok) == []
    request = [{"prompt": "The capital of Velaria is", "target_new": "Morn"}]
    plain = encode_requests(tiny_tok, request, 40)
    pre = encode_requests(tiny_tok, request, 40, prefix_ids=[tiny_tok.eos_token_id])
    assert pre.input_ids[0, 0] == tiny_tok.eos_token_id and torch.equal(pre.input_ids[0, 1:], plain.input_ids[0])
    assert torch.equal(pre.labels[0, 1:], plain.labels[0])
    seen = []
    real = fine_main.locate

    def spy(model, tok, requests, hparams, batch=None):
        seen.append(batch.input_ids[0, 0].item())
        return real(model, tok, requests, hparams, batch=batch)

    mp = pytest.MonkeyPatch()
    mp.setattr(fine_main, "locate", spy)
    try:
        fine_main.apply_fine_to_model(gptj, tiny_tok, request, FiNEHyperParams(model_name="x", last_layer=0,
                                                                               epochs=2))
    finally:
        mp.undo()
    assert seen == [tiny_tok.eos_token_id]


def test_smollm2_paper_yaml_is_the_authors_llama3_configuration():
    """hparams/FiNE/smollm2-135m-paper.yaml keeps their Llama-3-8B values (hparams/FINE/llama3-8b.yaml)."""
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "hparams", "FiNE", "smollm2-135m-paper.yaml")
    hp = FiNEHyperParams.from_hparams(path)
    authors = {"epochs": 50, "lr": 1e-3, "gamma": 0.1, "beta": 10.0, "alpha": 1.0, "neuron_num": 5,
               "early_stop_prob": 0.9, "last_layer": 3, "max_length": 40, "batch_size": 1, "weight_decay": 0.0,
               "value_module": "mlp.down_proj", "seed": 42}
    assert {k: getattr(hp, k) for k in authors} == authors
