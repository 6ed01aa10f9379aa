"""KNE options of issue 12: init, optimizer, stop_on, the KL terms and the null-space projection.

Each test would fail if its option did nothing: the same edit (same ensemble, same steps) is run with the
option off and on, and the quantity the option targets is compared.
"""

import copy
import math

import pytest
import tiny_models as tm
import torch

from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model, localize
from easyedit_kne.kne_main import build_updates, make_optimizer
from easyedit_kne.regularizers import ESSENCE_TEMPLATES, entities, essence_prompts, swap_entities, swapped_prompts

BASE = dict(model_name="fact-model", ig_steps=4, p=5.0, num_steps=12, lr=0.02, t_loss=0.0)


def _requests(fm, n=2):
    reqs = tm.edit_requests(fm.facts[:n])
    for r, f in zip(reqs, fm.facts[:n], strict=True):
        r["subject"] = f["subject"]
    return reqs


@pytest.fixture(scope="module")
def setup(fact_model):
    fm = fact_model
    reqs = _requests(fm)
    ensemble = localize(fm.model, fm.tok, reqs, KNEHyperParams(**BASE), progress=False)
    return fm, reqs, ensemble


def _edit(setup, **kw):
    fm, reqs, ensemble = setup
    model = copy.deepcopy(fm.model)
    stats = EditStats()
    apply_kne_to_model(model, fm.tok, reqs, KNEHyperParams(**{**BASE, **kw}), ensemble=ensemble, stats=stats)
    return model, stats


@torch.no_grad()
def _next_logp(model, tok, prompts):
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        out.append(torch.log_softmax(model(input_ids=ids).logits[0].float(), -1))
    return out


def _mean_kl(ref, new, last_only):
    vals = [(r.exp() * (r - n)).sum(-1) for r, n in zip(ref, new, strict=True)]
    return float(torch.stack([v[-1] if last_only else v[:-1].mean() for v in vals]).mean())


def test_entities_shipped_and_swaps_deterministic():
    assert len(entities()) >= 200 and "Paris" in entities()
    a, b = swap_entities("Paris", 4, 0), swap_entities("Paris", 4, 0)
    assert a == b and "Paris" not in a and len(set(a)) == 4
    reqs = [{"prompt": "The capital of Velaria is", "target_new": "x", "subject": "Velaria"},
            {"prompt": "no subject here", "target_new": "x", "subject": "Zed"}]
    prompts = swapped_prompts(reqs, 3, 0)
    assert len(prompts) == 3 and all(p.startswith("The capital of ") and "Velaria" not in p for p in prompts)


def test_init_kaiming_block_and_optimizer(setup):
    fm, _, ensemble = setup
    zero = build_updates(fm.model, ensemble, 1.0, "zero")
    kaim = build_updates(fm.model, ensemble, 1.0, "kaiming")
    assert all(bool((u.block == 0).all()) for u in zero)
    for u in kaim:
        fan_in = u.block.shape[1] if u.axis == "out" else u.block.shape[0]
        assert 0 < float(u.block.detach().abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
        assert u.block.requires_grad
    hp = KNEHyperParams(**BASE, optimizer="adamw", weight_decay=0.01)
    assert isinstance(make_optimizer([kaim[0].block], hp), torch.optim.AdamW)
    assert type(make_optimizer([kaim[0].block], KNEHyperParams(**BASE))) is torch.optim.Adam
    with pytest.raises(ValueError, match="init="):
        KNEHyperParams(**BASE, init="xavier")
    with pytest.raises(ValueError, match="optimizer="):
        KNEHyperParams(**BASE, optimizer="sgd")


def test_kaiming_init_changes_the_edit(setup):
    m0, _ = _edit(setup)
    m1, _ = _edit(setup, init="kaiming")
    diffs = [not torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters(), strict=True)]
    assert any(diffs)


def test_stop_on_accuracy_stops_when_targets_are_argmax(setup):
    fm, reqs, _ = setup
    _, by_loss = _edit(setup, num_steps=40)
    model, by_acc = _edit(setup, num_steps=40, stop_on="accuracy")
    assert by_loss.steps == 40 and by_acc.steps < 40
    assert all(tm.fact_hits(model, fm.tok, fm.facts[:2], target_key="target_new"))


def _drift_on_and_off(setup, prompts, last_only: bool, **option) -> tuple[float, float]:
    """Mean KL from the unedited model on `prompts` after the same edit with `option` on, and off."""
    fm = setup[0]
    ref = _next_logp(fm.model, fm.tok, prompts)
    plain, _ = _edit(setup, lr=0.05)
    on, _ = _edit(setup, lr=0.05, **option)
    return (_mean_kl(ref, _next_logp(on, fm.tok, prompts), last_only),
            _mean_kl(ref, _next_logp(plain, fm.tok, prompts), last_only))


def test_kl_subject_keeps_swapped_prompts(setup):
    d_kl, d_plain = _drift_on_and_off(setup, swapped_prompts(setup[1], 4, 42), True, kl_subject_weight=5.0)
    assert d_kl < 0.7 * d_plain, (d_kl, d_plain)


def test_kl_essence_keeps_what_follows_the_subject_alone(setup):
    fm, reqs, _ = setup
    prompts = essence_prompts(reqs)
    n = len(ESSENCE_TEMPLATES)
    assert len(prompts) == n * len(reqs)
    assert all(r["subject"] in p for i, r in enumerate(reqs) for p in prompts[i * n:(i + 1) * n])
    assert prompts[0] == ESSENCE_TEMPLATES[0].format(reqs[0]["subject"])
    d_kl, d_plain = _drift_on_and_off(setup, prompts, True, kl_essence_weight=5.0)
    assert d_kl < 0.7 * d_plain, (d_kl, d_plain)
    with pytest.raises(ValueError, match="kl_essence_weight"):
        KNEHyperParams(**BASE, kl_essence_weight=-1)
    no_subject = [{k: v for k, v in r.items() if k != "subject"} for r in reqs]
    with pytest.warns(UserWarning, match=r"kl_essence_weight=1.0: request\(s\) \[0, 1\] have no `subject`"):
        _edit((fm, no_subject, setup[2]), kl_essence_weight=1.0)


def test_kl_prompt_keeps_prompt_positions(setup):
    d_kl, d_plain = _drift_on_and_off(setup, [r["prompt"] for r in setup[1]], False, kl_prompt_weight=5.0)
    assert d_kl < 0.7 * d_plain, (d_kl, d_plain)


@pytest.mark.parametrize("axis", ["in", "out"])
def test_nullspace_leaves_preserved_keys_unchanged(fact_model, tmp_path, axis):
    fm = fact_model
    reqs = _requests(fm)
    texts = [f["prompt"] + " " + f["target_true"] for f in fm.facts[4:10]]
    (tmp_path / "keep.txt").write_text("\n".join(texts))
    hp = dict(BASE, neuron_axis=axis, nullspace_text=str(tmp_path / "keep.txt"),
              nullspace_cache_dir=str(tmp_path / "ns"), lr=0.05)
    ensemble = localize(fm.model, fm.tok, reqs, KNEHyperParams(**hp), progress=False)
    ref = _next_logp(fm.model, fm.tok, texts)
    out = {}
    for on in (False, True):
        model = copy.deepcopy(fm.model)
        apply_kne_to_model(model, fm.tok, reqs, KNEHyperParams(**hp, nullspace=on), ensemble=ensemble)
        out[on] = max(float((a - b).abs().max()) for a, b in zip(ref, _next_logp(model, fm.tok, texts),
                                                                strict=True))
    assert out[False] > 1e-2 and out[True] < 0.1 * out[False], out
    assert list((tmp_path / "ns").glob("*.safetensors"))  # statistics cached on disk


def test_kl_subject_warns_about_requests_without_a_usable_subject(setup):
    fm, reqs, _ = setup
    no_subject = [dict(reqs[0]), {k: v for k, v in reqs[1].items() if k != "subject"}]
    with pytest.warns(UserWarning, match=r"request\(s\) \[1\] have no `subject`"):
        _edit((fm, no_subject, setup[2]), kl_subject_weight=1.0)
    elsewhere = [dict(reqs[0], subject="not in the prompt")]
    with pytest.warns(UserWarning, match=r"request\(s\) \[0\]"):
        _edit((fm, elsewhere, setup[2]), kl_subject_weight=1.0)
