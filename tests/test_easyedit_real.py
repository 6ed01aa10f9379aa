"""KNE through a real EasyEdit (github.com/zjunlp/EasyEdit): BaseEditor.edit / batch_edit / sequential edits.

Runs only when the environment variable EASYEDIT_PATH names an EasyEdit checkout and `easyeditor` imports
in this interpreter (EasyEdit's requirements installed); scripts/setup_easyedit_env.sh builds such a venv:

    git clone https://github.com/zjunlp/EasyEdit /path/to/EasyEdit
    scripts/setup_easyedit_env.sh /path/to/EasyEdit ee-venv
    EASYEDIT_PATH=/path/to/EasyEdit ee-venv/bin/python -m pytest tests/test_easyedit_real.py

Everything runs on CPU with the tiny fact model of tests/tiny_models.py, saved to a folder whose name
contains "llama": EasyEdit picks its loader by substrings of `model_name`, and its evaluation calls
`model_name.lower()`, so a `(model, tok)` tuple only works if `editor.model_name` is then set to a string
(tested below). `device="cpu"` because EasyEdit turns an integer device into `cuda:N`.
"""

import json
import logging
import os
import sys

import pytest

EASYEDIT_PATH = os.environ.get("EASYEDIT_PATH", "").strip()
_HOW = ("set EASYEDIT_PATH to a checkout of https://github.com/zjunlp/EasyEdit and run this file with a "
        "Python that has EasyEdit's requirements (scripts/setup_easyedit_env.sh builds one)")
if not EASYEDIT_PATH:
    pytest.skip(f"EASYEDIT_PATH is not set: {_HOW}", allow_module_level=True)
_added_path = os.path.abspath(EASYEDIT_PATH) not in sys.path
if _added_path:
    sys.path.insert(0, os.path.abspath(EASYEDIT_PATH))
try:
    import easyeditor  # noqa: F401  (slow: EasyEdit imports all its methods)
except Exception as e:  # a missing dependency of EasyEdit shows up as any kind of error
    for _name in [m for m in sys.modules if m == "easyeditor" or m.startswith("easyeditor.")]:
        del sys.modules[_name]  # leave no half-imported EasyEdit behind for the other test files
    if _added_path:
        sys.path.remove(os.path.abspath(EASYEDIT_PATH))
    pytest.skip(f"easyeditor does not import from EASYEDIT_PATH={EASYEDIT_PATH!r} "
                f"({type(e).__name__}: {e}); {_HOW}", allow_module_level=True)

import tiny_models as tm  # noqa: E402
import torch  # noqa: E402
from easyeditor import BaseEditor  # noqa: E402
from easyeditor.editors import editor as ee_editor  # noqa: E402
from easyeditor.editors.batch_editor import BatchEditor  # noqa: E402
from easyeditor.util import alg_dict as ee_alg_dict  # noqa: E402

from easyedit_kne.easyedit import register  # noqa: E402
from easyedit_kne.hparams import KNEHyperParams  # noqa: E402

pytestmark = pytest.mark.easyedit

# Small, fast settings that still edit the tiny fact model reliably.
FAST = dict(device="cpu", p=5.0, ig_steps=5)
TARGET_SUFFIX = "mlp.down_proj.weight"
# One fact of each of three relations (capital, CEO, language) and a neighbour of each for locality.
EDITS = [tm.FACTS[0], tm.FACTS[8], tm.FACTS[16]]
NEIGHBOURS = [tm.FACTS[1], tm.FACTS[9], tm.FACTS[17]]


@pytest.fixture(scope="module")
def registered():
    return register()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fact_model):
    path = tmp_path_factory.mktemp("models") / "kne-fact-llama"
    fact_model.model.save_pretrained(path)
    fact_model.tok.save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """EasyEdit writes ./logs/run.log and ./logs/results.json and adds log handlers on every BaseEditor."""
    monkeypatch.chdir(tmp_path)
    log = logging.getLogger(ee_editor.__name__)
    before = set(log.handlers)
    yield
    for h in [h for h in log.handlers if h not in before]:
        log.removeHandler(h)
        h.close()


def make_editor(model_name, **overrides):
    return BaseEditor.from_hparams(KNEHyperParams(model_name=model_name, **{**FAST, **overrides}))


def spy_on_apply(editor):
    """Record (number of requests, kwargs) of every call EasyEdit makes to the KNE apply function."""
    calls = []
    real = editor.apply_algo

    def apply(model, tok, requests, hparams, **kwargs):
        calls.append((len(requests), kwargs))
        return real(model, tok, requests, hparams, **kwargs)

    editor.apply_algo = apply
    return calls


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
    }


def hooks_left(model):
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]


def assert_bit_identical(model, snap):
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    old = snap["state"]
    differ = [k for k, v in state.items() if v.dtype != old[k].dtype or not torch.equal(v, old[k])]
    assert differ == [], f"weights not restored bit for bit: {differ}"
    assert {k: p.requires_grad for k, p in model.named_parameters()} == snap["requires_grad"]
    assert hooks_left(model) == []


def changed_weights(model, snap):
    return sorted(k for k, v in model.state_dict().items() if not torch.equal(v, snap["state"][k]))


def mean(metrics, phase, key):
    vals = [float(torch.tensor(m[phase][key], dtype=torch.float64).mean()) for m in metrics]
    return sum(vals) / len(vals)


def edit_args(facts, neighbours):
    return dict(
        prompts=[f["prompt"] for f in facts],
        target_new=[f["target_new"] for f in facts],
        ground_truth=[f["target_true"] for f in facts],
        rephrase_prompts=[f["rephrase_prompt"] for f in facts],
        locality_inputs={"neighborhood": {"prompt": [f["prompt"] for f in neighbours],
                                          "ground_truth": [f["target_true"] for f in neighbours]}},
        portability_inputs={"rephrase_hop": {"prompt": [f["rephrase_prompt"] for f in facts],
                                             "ground_truth": [f["target_new"] for f in facts]}},
        verbose=False,
    )


def check_metrics(metrics, n):
    assert len(metrics) == n
    for m in metrics:
        for phase in ("pre", "post"):
            assert {"rewrite_acc", "rephrase_acc", "locality", "portability"} <= m[phase].keys()
            assert "rephrase_hop_acc" in m[phase]["portability"]
        assert len(m["post"]["locality"]["neighborhood_acc"]) == 1
    # the fact model knows the true answers, not the new ones: the edit must raise rewrite accuracy
    assert mean(metrics, "post", "rewrite_acc") > mean(metrics, "pre", "rewrite_acc")


# ------------------------------------------------------------------------------------------------------
def test_register_is_idempotent(registered):
    from easyedit_kne.kne_main import apply_kne_to_model

    assert "KNE" in registered
    wrapper = BatchEditor.__dict__["is_batchable_method"]
    assert register() == registered == register()
    assert BatchEditor.__dict__["is_batchable_method"] is wrapper  # not wrapped again
    assert ee_alg_dict.ALG_DICT["KNE"] is apply_kne_to_model
    assert ee_editor.ALG_DICT is ee_alg_dict.ALG_DICT  # what BaseEditor.__init__ looks names up in
    assert easyeditor.ALG_DICT["KNE"] is apply_kne_to_model
    assert BatchEditor.is_batchable_method("KNE")
    assert BatchEditor.is_batchable_method("MEMIT") and not BatchEditor.is_batchable_method("ROME")
    assert "KNE" not in [m.value for m in BatchEditor]
    if "FiNE" in registered:
        from easyedit_kne.fine import apply_fine_to_model
        assert ee_alg_dict.ALG_DICT["FiNE"] is apply_fine_to_model


def test_edit_batch_size_1_restores_weights(registered, model_dir):
    editor = make_editor(model_dir)
    calls = spy_on_apply(editor)
    snap = snapshot(editor.model)
    metrics, edited_model, weights_copy = editor.edit(**edit_args(EDITS[:2], NEIGHBOURS[:2]))

    check_metrics(metrics, 2)
    # one apply call per request, with EasyEdit's edit_requests keywords (train_ds goes through **kwargs)
    assert [n for n, _ in calls] == [1, 1]
    assert calls[0][1] == dict(copy=False, return_orig_weights=True, keep_original_weight=False,
                               train_ds=None)
    assert edited_model is editor.model
    assert isinstance(weights_copy, dict) and weights_copy
    names = dict(editor.model.named_parameters())
    assert all(k in names and k.endswith(TARGET_SUFFIX) for k in weights_copy)
    assert_bit_identical(editor.model, snap)


@pytest.mark.parametrize("sequential", [False, True], ids=["restore", "sequential"])
def test_batch_edit(registered, model_dir, sequential):
    editor = make_editor(model_dir, batch_size=2)
    calls = spy_on_apply(editor)
    snap = snapshot(editor.model)
    metrics, edited_model, weights_copy = editor.batch_edit(sequential_edit=sequential,
                                                            **edit_args(EDITS, NEIGHBOURS))

    check_metrics(metrics, 3)
    assert [n for n, _ in calls] == [2, 1]  # chunks of hparams.batch_size
    assert calls[0][1] == dict(copy=False, return_orig_weights=True)
    if sequential:
        assert editor.model is edited_model
        changed = changed_weights(editor.model, snap)
        assert changed and all(k.endswith(TARGET_SUFFIX) for k in changed)
        assert hooks_left(editor.model) == []
    else:
        assert_bit_identical(editor.model, snap)


def test_edit_sequential_accumulates_in_place(registered, model_dir):
    editor = make_editor(model_dir)
    snap = snapshot(editor.model)
    metrics, edited_model, weights_copy = editor.edit(sequential_edit=True,
                                                      **edit_args(EDITS[:2], NEIGHBOURS[:2]))

    check_metrics(metrics, 2)
    # EasyEdit does not reassign editor.model in sequential edit(): KNE must edit it in place
    assert edited_model is editor.model
    changed = changed_weights(editor.model, snap)
    assert changed and all(k.endswith(TARGET_SUFFIX) for k in changed)
    assert set(weights_copy) <= set(changed)
    assert hooks_left(editor.model) == []
    assert {k: p.requires_grad for k, p in editor.model.named_parameters()} == snap["requires_grad"]


def test_knowedit_style_inputs(registered, model_dir, tmp_path):
    """The call of EasyEdit's examples/run_knowedit_llama2.py: subject, no ground_truth, several locality and
    portability keys with a list of prompts per edit (or None), keep_original_weight=True, pre_file."""
    f0, f1 = EDITS[:2]
    n0, n1 = NEIGHBOURS[:2]
    locality = {
        "Relation_Specificity": {"prompt": [[n0["prompt"], tm.FACTS[2]["prompt"]], [n1["prompt"]]],
                                 "ground_truth": [[n0["target_true"], tm.FACTS[2]["target_true"]],
                                                  [n1["target_true"]]]},
        "Forgetfulness": {"prompt": [[f0["rephrase_prompt"]], None],
                          "ground_truth": [[f0["target_true"]], None]},
    }
    portability = {
        "Subject_Aliasing": {"prompt": [[f0["rephrase_prompt"]], [f1["rephrase_prompt"]]],
                             "ground_truth": [[f0["target_new"]], [f1["target_new"]]]},
        "reasoning": {"prompt": [[f"{f0['subject']} is a"], [f"{f1['subject']} is a"]],
                      "ground_truth": [["country"], ["company"]]},
        "Logical_Generalization": {"prompt": [[f0["prompt"]], [f1["prompt"]]],
                                   "ground_truth": [[f0["target_new"]], [f1["target_new"]]]},
    }
    editor = make_editor(model_dir)
    snap = snapshot(editor.model)
    pre_file = tmp_path / "pre_edit.json"
    metrics, _, _ = editor.edit(
        prompts=[f0["prompt"], f1["prompt"]], target_new=[f0["target_new"], f1["target_new"]],
        subject=[f0["subject"], f1["subject"]], locality_inputs=locality, portability_inputs=portability,
        keep_original_weight=True, pre_file=str(pre_file), verbose=False)

    assert len(metrics) == 2 and pre_file.exists() and len(json.loads(pre_file.read_text())) == 2
    assert metrics[0]["requested_rewrite"]["ground_truth"] is None
    assert metrics[0]["requested_rewrite"]["subject"] == f0["subject"]
    post0, post1 = metrics[0]["post"], metrics[1]["post"]
    assert len(post0["locality"]["Relation_Specificity_acc"]) == 2  # one score per locality prompt
    assert len(post0["locality"]["Forgetfulness_acc"]) == 1
    assert "Forgetfulness_acc" not in post1["locality"]  # a None entry means no such check for that edit
    for post in (post0, post1):
        assert {f"{k}_acc" for k in portability} <= post["portability"].keys()
    assert mean(metrics, "post", "rewrite_acc") > mean(metrics, "pre", "rewrite_acc")
    assert_bit_identical(editor.model, snap)


def test_model_tok_tuple_as_model_name(registered, fact_model_copy):
    """EasyEdit accepts (model, tok) at construction but its evaluation needs model_name to be a string."""
    model, tok = fact_model_copy.model, fact_model_copy.tok
    editor = make_editor((model, tok))
    assert editor.model is model and editor.tok is tok
    editor.model_name = "kne-fact-llama"  # used only for substring checks ('t5' in model_name.lower())
    snap = snapshot(model)
    f = EDITS[0]
    metrics, edited_model, _ = editor.edit(prompts=f["prompt"], target_new=f["target_new"],
                                           ground_truth=f["target_true"], verbose=False)
    assert len(metrics) == 1 and edited_model is model
    assert mean(metrics, "post", "rewrite_acc") > mean(metrics, "pre", "rewrite_acc")
    assert_bit_identical(model, snap)


def test_precomputed_ensemble_and_cache_through_base_editor(registered, model_dir, fact_model, tmp_path):
    """A benchmark localizes once: `ensemble_path` in the hparams is used for every edit (only its neurons
    change), and `cache_dir` is filled when BaseEditor localizes itself."""
    from easyedit_kne import localize

    hp = KNEHyperParams(model_name=model_dir, **FAST)
    localization = [{"prompt": f["prompt"], "target_new": f["target_new"]} for f in tm.FACTS[24:30]]
    ensemble = localize(fact_model.model, fact_model.tok, localization, hp, progress=False)
    path = tmp_path / "ensemble.safetensors"
    ensemble.save(path)

    editor = make_editor(model_dir, ensemble_path=str(path))
    snap = snapshot(editor.model)
    editor.edit(sequential_edit=True, **edit_args(EDITS[:2], NEIGHBOURS[:2]))
    state = editor.model.state_dict()
    for name, idx in ensemble.neurons.items():
        diff = (state[f"{name}.weight"] != snap["state"][f"{name}.weight"]).any(dim=0)  # columns (in axis)
        assert set(diff.nonzero().flatten().tolist()) <= set(idx.tolist())
    assert {k[: -len(".weight")] for k in changed_weights(editor.model, snap)} <= set(ensemble.neurons)

    cache_dir = tmp_path / "cache"
    editor = make_editor(model_dir, cache_dir=str(cache_dir))
    editor.edit(sequential_edit=False, **edit_args(EDITS[:1], NEIGHBOURS[:1]))
    assert len(list(cache_dir.rglob("*.safetensors"))) == 1


# ------------------------------------------------------------------------------------------------------
def _quality_requests():
    """KnowEdit-shaped requests: rephrase, two locality keys and two portability keys (one with 2 prompts)."""
    out = []
    for fact, other, third in zip(EDITS, NEIGHBOURS, [tm.FACTS[2], tm.FACTS[10], tm.FACTS[18]], strict=True):
        out.append({
            "prompt": fact["prompt"], "target_new": fact["target_new"], "ground_truth": fact["target_true"],
            "subject": fact["subject"], "rephrase_prompt": fact["rephrase_prompt"],
            "locality": {"Relation_Specificity": {"prompt": [other["prompt"], third["prompt"]],
                                                  "ground_truth": [other["target_true"], third["target_true"]]},
                         "Forgetfulness": {"prompt": third["rephrase_prompt"], "ground_truth": third["target_true"]}},
            "portability": {"Subject_Aliasing": {"prompt": [fact["rephrase_prompt"], fact["prompt"]],
                                                 "ground_truth": [fact["target_new"], fact["target_new"]]},
                            "reasoning": {"prompt": other["prompt"], "ground_truth": other["target_true"]}},
        })
    return out


def _without_meta(metrics):
    return {k: v for k, v in metrics.items() if k != "metric_meta"}


def test_metrics_equal_easyedit_compute_edit_quality(fact_model):
    """Our evaluate.compute_edit_quality + finalize_locality_metrics give EasyEdit's numbers, before and after
    a real KNE edit; our fluency samples the same text as EasyEdit's generate_fast from the same seed and our
    n-gram entropy equals EasyEdit's on it (EasyEdit's word tokenizer needs NLTK data that cannot be downloaded
    here, so its nltk.word_tokenize is given ours; test_evaluate.py checks ours against NLTK's output)."""
    import copy

    from easyeditor.editors.editor import finalize_locality_metrics as ee_finalize
    from easyeditor.evaluate import evaluate as ee_eval
    from easyeditor.evaluate import evaluate_utils as ee_utils
    from easyeditor.util.generate import generate_fast as ee_generate_fast

    from easyedit_kne import evaluate as ev
    from easyedit_kne.kne_main import apply_kne_to_model

    model, tok = fact_model.model, fact_model.tok
    hp = KNEHyperParams(model_name="kne-fact-llama", **FAST)
    requests = _quality_requests()
    edited = copy.deepcopy(model)
    apply_kne_to_model(edited, tok, requests, hp, copy=False)
    compared = 0
    for request in requests:
        case_ours, case_theirs = {}, {}
        for phase, m in (("pre", model), ("post", edited)):
            theirs = ee_eval.compute_edit_quality(m, hp.model_name, hp, tok, copy.deepcopy(request), "cpu")
            ours = ev.compute_edit_quality(m, tok, request, max_length=hp.max_length)
            assert _without_meta(ours) == _without_meta(theirs), phase
            case_ours[phase], case_theirs[phase] = ours, theirs
            compared += 1
        ev.finalize_locality_metrics(case_ours, request)
        ee_finalize(case_theirs, request, hp, hp.model_name)
        assert case_ours["post"]["locality"] == case_theirs["post"]["locality"]
        assert {"Relation_Specificity_acc", "Forgetfulness_acc"} <= set(case_ours["post"]["locality"])
    assert compared == 6
    # the edit moved the numbers: both implementations saw an edited model, not two copies of one
    assert case_ours["post"]["rewrite_acc"] != case_ours["pre"]["rewrite_acc"]

    prompt = requests[0]["prompt"]
    # EasyEdit's generate_fast passes no attention mask to models whose name has "llama" (the SmolLM2 folder's
    # does); otherwise it passes a mask of the uncached tokens only, which transformers 5 reads as the whole
    # sequence's mask and the sampled text degenerates. Ours runs an unpadded prompt without a mask.
    model = copy.deepcopy(model)
    model.name_or_path = "kne-fact-llama"
    torch.manual_seed(123)
    their_text = ee_generate_fast(model, tok, [prompt], n_gen_per_prompt=1, max_out_len=40)
    torch.manual_seed(123)
    our_text = ev.generate_fast(model, tok, [prompt], n_gen_per_prompt=1, max_out_len=40)
    assert our_text == their_text and len(tok(our_text[0])["input_ids"]) > len(tok(prompt)["input_ids"])
    real_tokenize = ee_utils.nltk.word_tokenize
    ee_utils.nltk.word_tokenize = ev.word_tokenize
    try:
        theirs = ee_utils.n_gram_entropy(our_text)
    finally:
        ee_utils.nltk.word_tokenize = real_tokenize
    assert ev.n_gram_entropy(our_text) == pytest.approx(theirs, rel=1e-12)
