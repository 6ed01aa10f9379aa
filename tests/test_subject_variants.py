"""KNE's `subject_variants`: the variants of a subject string, the requests they make, and an edit trained on
them holds under the variant spelling (and the same edit without the option holds less there)."""

import copy

import pytest
import tiny_models as tm

from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model, localize
from easyedit_kne.subject_variants import ascii_fold, subject_variants, variant_requests

BASE = dict(model_name="fact-model", ig_steps=4, p=5.0, num_steps=15, lr=0.02, t_loss=0.0)


@pytest.mark.parametrize("subject, expected", [
    ("Jindřich Kaan von Albest", ["Jindrich Kaan von Albest"]),
    ("Thomas R Unnasch", ["Thomas Unnasch"]),
    ("Dennis A. Carson", ["Dennis Carson"]),
    ("William Nicolas Blomberg", ["William Blomberg"]),
    ("José María Q Núñez", ["Jose Maria Q Nunez", "José María Núñez", "José Núñez"]),
    ("1985 Latvian Championships \u2013 men's singles", ["1985 Latvian Championships - men's singles"]),
    ("Parcelforce", []),
    ("The Lord of the Rings", []),  # not a personal name: words are kept
])
def test_variants_of_a_subject(subject, expected):
    assert subject_variants(subject) == expected
    assert ascii_fold("Ørsted Núñez") == "Ørsted Nunez"  # a letter without a combining mark stays


def test_variant_requests_and_validation():
    reqs = [{"prompt": "The gender of Dennis A. Carson is", "target_new": "x", "subject": "Dennis A. Carson"},
            {"prompt": "The capital of France is", "target_new": "y", "subject": "Italy"},  # not in the prompt
            {"prompt": "Who is Ann?", "target_new": "z"}]  # no subject
    out = variant_requests(reqs, 2)
    assert out == [{"prompt": "The gender of Dennis Carson is", "target_new": "x", "subject": "Dennis Carson"}]
    assert variant_requests(reqs, 0) == []
    assert reqs[0]["prompt"] == "The gender of Dennis A. Carson is"  # the inputs are not changed
    with pytest.raises(ValueError, match="subject_variants"):
        KNEHyperParams(**BASE, subject_variants=-1)


def test_edit_trained_on_variants_holds_under_them(fact_model):
    fm = fact_model
    reqs = []
    for f in fm.facts[:2]:  # the fact model's subjects with a diacritic: "Velária", whose variant is "Velaria"
        accented = f["subject"][:-2] + "\u00e1" + f["subject"][-1]
        reqs.append({"prompt": f["prompt"].replace(f["subject"], accented), "target_new": f["target_new"],
                     "subject": accented})
    variants = variant_requests(reqs, 1)
    assert [r["subject"] for r in variants] == [ascii_fold(r["subject"]) for r in reqs]
    ensemble = localize(fm.model, fm.tok, reqs, KNEHyperParams(**BASE), progress=False)

    def edit(**kw):
        model, stats = copy.deepcopy(fm.model), EditStats()
        apply_kne_to_model(model, fm.tok, reqs, KNEHyperParams(**{**BASE, **kw}), ensemble=ensemble, stats=stats)
        return model, stats

    plain, s_plain = edit()
    var, s_var = edit(subject_variants=1)
    assert s_var.losses[0] != pytest.approx(s_plain.losses[0])  # the variant copies are in the loss
    assert tm.target_nll(var, fm.tok, variants) < 0.8 * tm.target_nll(plain, fm.tok, variants)
    # stop_on accuracy waits for the variants too: every target token is the argmax under them
    model, stats = edit(subject_variants=1, stop_on="accuracy", num_steps=80)
    assert stats.trained_holds and stats.steps < 80
    assert tm.targets_are_argmax(model, fm.tok, variants)
