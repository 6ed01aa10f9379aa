"""Localize once per localization set in a process: an editor loop (one apply_kne_to_model per edit, weights
restored from weights_copy after each, as EasyEdit's BaseEditor does) localizes once, not once per edit."""

import json

import pytest
import tiny_models
import torch

from easyedit_kne import KNEHyperParams, apply_kne_to_model
from easyedit_kne import attribution as attribution_module
from easyedit_kne import localization as localization_module
from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble


@pytest.fixture
def counted(monkeypatch):
    localization_module.clear_localization_memo()
    calls = {"attribution": 0, "load": 0}
    real = attribution_module.attribute_per_request
    real_load = KnowledgeNeuronalEnsemble.load.__func__

    def attribution(*args, **kwargs):
        calls["attribution"] += 1
        return real(*args, **kwargs)

    def load(cls, path):
        calls["load"] += 1
        return real_load(cls, path)

    monkeypatch.setattr(localization_module, "attribute_per_request", attribution)
    monkeypatch.setattr(KnowledgeNeuronalEnsemble, "load", classmethod(load))
    yield calls
    localization_module.clear_localization_memo()


def _editor_loop(model, tok, requests, hp):
    for request in requests:
        _, weights_copy = apply_kne_to_model(model, tok, [request], hp, return_orig_weights=True)
        with torch.no_grad():  # what BaseEditor does after evaluating each edit
            for name, value in weights_copy.items():
                model.get_parameter(name).copy_(value)


def _knowedit_file(tmp_path, facts):
    records = [{"subject": f["subject"], "prompt": f["prompt"], "target_new": f["target_new"],
                "ground_truth": [f["target_true"]]} for f in facts]
    path = tmp_path / "loc_zsre.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def test_editor_loop_localizes_once(fact_model_copy, tmp_path, counted):
    model, tok, facts = fact_model_copy.model, fact_model_copy.tok, fact_model_copy.facts
    hp = KNEHyperParams(model_name="x", ig_steps=2, num_steps=3, p=5, localization_data=_knowedit_file(tmp_path,
                        facts[8:12]), localization_data_type="zsre")
    state = tiny_models.state_of(model)
    _editor_loop(model, tok, tiny_models.edit_requests(facts[:3]), hp)
    assert counted["attribution"] == 1
    assert tiny_models.same_state(model, state)
    # another localization setting, or another model state, localizes again
    hp.p = 10
    _editor_loop(model, tok, tiny_models.edit_requests(facts[:1]), hp)
    assert counted["attribution"] == 2
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.1
    _editor_loop(model, tok, tiny_models.edit_requests(facts[:1]), hp)
    assert counted["attribution"] == 3


def test_editor_loop_reads_a_saved_ensemble_once(fact_model_copy, tmp_path, counted):
    model, tok, facts = fact_model_copy.model, fact_model_copy.tok, fact_model_copy.facts
    hp = KNEHyperParams(model_name="x", ig_steps=2, num_steps=3, p=5)
    path = tmp_path / "ensemble.safetensors"
    localization_module.localize(model, tok, tiny_models.edit_requests(facts[8:10]), hp, progress=False).save(path)
    hp.ensemble_path = str(path)
    _editor_loop(model, tok, tiny_models.edit_requests(facts[:3]), hp)
    assert counted["load"] == 1 and counted["attribution"] == 1  # the attribution of the localize() above



def test_a_new_cache_dir_is_filled_even_when_the_memo_has_the_ensemble(counted, tmp_path):
    fm = tiny_models.fact_model_copy()
    requests = tiny_models.edit_requests(fm.facts[:1])
    hp = KNEHyperParams(model_name="fact-model", ig_steps=2, p=5.0, num_steps=2)
    _editor_loop(fm.model, fm.tok, requests, hp)  # localizes once into the memo, no cache
    assert counted["attribution"] == 1
    hp.cache_dir = str(tmp_path / "cache")
    _editor_loop(fm.model, fm.tok, requests, hp)  # same model state and items, but a cache to fill
    assert counted["attribution"] == 2
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
