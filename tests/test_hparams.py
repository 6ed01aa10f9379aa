"""KNEHyperParams: defaults, YAML loading, validation with messages naming the field."""

import glob
import os

import pytest
import yaml

from easyedit_kne import KNEHyperParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_and_issue_example():
    hp = KNEHyperParams(model_name="x", target_modules=["mlp.down_proj"], layers=[0, 2], ig_steps=7)
    assert hp.alg_name == "KNE" and hp.ig_steps == 7 and hp.layers == [0, 2]
    for attr in ("device", "model_parallel", "fp16", "batch_size", "max_length", "evaluation_type",
                 "use_chat_template"):
        assert hasattr(hp, attr)


def test_from_hparams_accepts_string_numbers(tmp_path):
    path = tmp_path / "kne.yaml"
    path.write_text(yaml.safe_dump({"alg_name": "KNE", "model_name": "m", "lr": "5e-3", "p": "2",
                                    "num_steps": "10"}))
    hp = KNEHyperParams.from_hparams(path)
    assert hp.lr == pytest.approx(5e-3) and hp.p == 2.0 and hp.num_steps == 10


@pytest.mark.parametrize("content, field", [
    ({"alg_name": "ROME", "model_name": "m"}, "alg_name"),
    ({"alg_name": "KNE", "model_name": "m", "lr_rate": 1}, "lr_rate"),
    ({"alg_name": "KNE"}, "model_name"),
    ({"alg_name": "KNE", "model_name": "m", "p": 0}, "p="),
    ({"alg_name": "KNE", "model_name": "m", "p": 100.5}, "p="),
    ({"alg_name": "KNE", "model_name": "m", "ig_steps": 0}, "ig_steps"),
    ({"alg_name": "KNE", "model_name": "m", "lr": ".nan"}, "lr"),
    ({"alg_name": "KNE", "model_name": "m", "lr": -1}, "lr"),
    ({"alg_name": "KNE", "model_name": "m", "neuron_axis": "rows"}, "neuron_axis"),
    ({"alg_name": "KNE", "model_name": "m", "score_aggregation": "median"}, "score_aggregation"),
    ({"alg_name": "KNE", "model_name": "m", "selection_scope": "local"}, "selection_scope"),
    ({"alg_name": "KNE", "model_name": "m", "target_modules": []}, "target_modules"),
    ({"alg_name": "KNE", "model_name": "m", "layers": [-1]}, "layers"),
])
def test_from_hparams_rejects_with_field_name(tmp_path, content, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=field):
        KNEHyperParams.from_hparams(path)


def test_nan_string_rejected_at_construction():
    with pytest.raises(ValueError, match="lr"):
        KNEHyperParams(model_name="m", lr=float("inf"))


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("alg_name: KNE\nmodel_name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(yaml.YAMLError):
        KNEHyperParams.from_hparams(path)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "hparams", "KNE", "*.yaml"))))
def test_shipped_hparams_load(path):
    hp = KNEHyperParams.from_hparams(path)
    assert hp.alg_name == "KNE" and hp.model_name


def test_shipped_hparams_cover_the_paper_models():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "hparams", "KNE", "*.yaml"))}
    assert {"smollm2-135m.yaml", "llama-7b.yaml", "gpt-j-6B.yaml", "gpt2-xl.yaml", "llama3-8b.yaml",
            "qwen2.5-7b.yaml", "mistral-7b.yaml"} <= names


@pytest.mark.parametrize("cls_path", ["easyedit_kne.hparams:KNEHyperParams", "easyedit_kne.fine:FiNEHyperParams"])
def test_from_hparams_resolves_a_shipped_name(cls_path, tmp_path, monkeypatch):
    import importlib

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    monkeypatch.chdir(tmp_path)  # nothing called llama-7b here: the name is a shipped one
    hp = cls.from_hparams("llama-7b")
    assert hp.alg_name == cls.ALG_NAME
    assert hp.to_dict() == cls.from_hparams(os.path.join(REPO, "hparams", cls.ALG_NAME, "llama-7b.yaml")).to_dict()
    assert cls.from_hparams("llama-7b.yaml").to_dict() == hp.to_dict()
    # a path still wins over a shipped name
    (tmp_path / "llama-7b.yaml").write_text(yaml.safe_dump({"alg_name": cls.ALG_NAME, "model_name": "mine"}))
    assert cls.from_hparams("llama-7b").model_name == "mine"


def test_from_hparams_unknown_name_lists_the_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="hparams file not found: llama-9b.*shipped names: .*llama-7b"):
        KNEHyperParams.from_hparams("llama-9b")
    with pytest.raises(FileNotFoundError, match="hparams file not found"):
        KNEHyperParams.from_hparams(tmp_path / "missing" / "llama-7b.yaml")  # a path is not looked up by name
