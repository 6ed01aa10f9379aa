"""The default FiNE tuning space (easyedit_kne/tuning/fine_space.yaml): every value it can sample is a valid
FiNEHyperParams, and its dev items include counterfact (issue 19)."""

import itertools

from easyedit_kne.fine import FiNEHyperParams
from easyedit_kne.tuning import space as sp


def test_every_corner_of_the_fine_space_is_valid_hparams():
    cfg = sp.default_config("FiNE")
    assert cfg["method"] == "FiNE" and cfg["datasets"].get("counterfact", 0) > 0
    base = dict(cfg["base"], alg_name="FiNE", model_name=cfg["model"])
    levels = []
    for name, spec in cfg["space"].items():
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        levels.append([(name, v) for v in values])
    for combo in itertools.islice(itertools.product(*levels), 0, None, 7):
        hp, _ = sp.to_hparams(base, dict(combo))
        FiNEHyperParams.from_dict(hp)
    assert {"delta_per", "alpha", "neuron_num", "lr"} <= set(cfg["space"])
