"""Reliability: bad input fails early and leaves the model alone, failures mid-edit leave it as it was,
over-long prompts are cut the same way wherever they are encoded, the cache survives damage and
concurrent writers, nothing is ever unpickled, and the same seed gives bit-identical results."""

import ast
import math
import multiprocessing
import pathlib
import re
import time
import warnings

import pytest
import tiny_models as tm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import normalizers

from easyedit_kne import EditStats, KNEHyperParams, ScoreCache, apply_kne_to_model, kne_main, localize
from easyedit_kne.tokens import encode_one

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
REQ = {"prompt": "The capital of Velaria is", "target_new": "Morn"}
REQ2 = {"prompt": "Kiva speaks", "target_new": "Dutch"}
LONG_PROMPT = " ".join(["The capital of Velaria is Morn and"] * 5) + " the capital of Quenmar is"
BASE_HP = dict(model_name="x", ig_steps=3, p=20, num_steps=4, lr=0.1, t_loss=0.0)
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "easyedit_kne"


def _hp(**kw) -> KNEHyperParams:
    return KNEHyperParams(**{**BASE_HP, **kw})


class Snapshot:
    """Everything a failed call must leave as it was: weights (bit for bit), requires_grad and training
    flags; and nothing it may leave behind: hooks, .grad."""

    def __init__(self, model):
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.training = {n: m.training for n, m in model.named_modules()}

    def assert_untouched(self):
        model = self.model
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        changed = [k for k, v in state.items() if v.dtype != self.state[k].dtype or not torch.equal(v, self.state[k])]
        assert changed == []
        assert {n: p.requires_grad for n, p in model.named_parameters()} == self.flags
        assert {n: m.training for n, m in model.named_modules()} == self.training
        hooked = [n for n, m in model.named_modules()
                  if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks]
        assert hooked == []
        assert [n for n, p in model.named_parameters() if p.grad is not None] == []


def _prepared(model) -> Snapshot:
    """Training mode and mixed requires_grad flags, so that restoring them is visible."""
    model.train()
    model.get_input_embeddings().weight.requires_grad_(False)
    return Snapshot(model)


def _fail_at_call(module, k: int, exc: BaseException):
    """A forward hook on `module` that raises `exc` from its (k+1)-th call on; returns the handle."""
    calls = [0]

    def hook(mod, args, out):
        calls[0] += 1
        if calls[0] > k:
            raise exc
    return module.register_forward_hook(hook)


def _entry(which):
    if which == "apply":
        return lambda model, tok, requests, hp: apply_kne_to_model(model, tok, requests, hp, return_orig_weights=True)
    return lambda model, tok, requests, hp: localize(model, tok, requests, hp, progress=False)


@pytest.fixture
def llama(tiny_tok):
    return tm.make_model("llama", tiny_tok)


# --------------------------------------------------------------------------------------------------------------
# Bad requests and hparams: ValueError/TypeError naming the field, before any weight is touched
# --------------------------------------------------------------------------------------------------------------
BAD_REQUESTS = {
    "empty target": ([{"prompt": "X is", "target_new": ""}], ValueError, "request 0: 'target_new'"),
    "None target": ([{"prompt": "X is", "target_new": None}], ValueError, "request 0: 'target_new'"),
    "blank target": ([{"prompt": "X is", "target_new": " "}], ValueError, "request 0: 'target_new'"),
    "blank dict target": ([{"prompt": "X is", "target_new": {"str": "\t"}}], ValueError, "'target_new'"),
    "missing target": ([{"prompt": "X is"}], ValueError, "'target_new' is missing"),
    "missing prompt": ([{"target_new": "Morn"}], ValueError, "request 0: 'prompt' is missing"),
    "None prompt": ([{"prompt": None, "target_new": "Morn"}], ValueError, "'prompt'"),
    "empty prompt": ([{"prompt": "", "target_new": "Morn"}], ValueError, "'prompt'"),
    "empty list": ([], ValueError, "requests: give a non-empty list"),
    "not a dict": (["The capital of Velaria is Morn"], TypeError, "request 0: expected a dict"),
    "second request bad": ([REQ, {"prompt": "Y is", "target_new": ""}], ValueError, "request 1: 'target_new'"),
}


@pytest.mark.parametrize("entry", ["apply", "localize"])
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_fail_before_touching_the_model(llama, tiny_tok, entry, case):
    requests, exc, message = BAD_REQUESTS[case]
    snap = _prepared(llama)
    with pytest.raises(exc, match=re.escape(message)):
        _entry(entry)(llama, tiny_tok, requests, _hp())
    snap.assert_untouched()


@pytest.fixture
def stripping_tok():
    """A tokenizer that deletes zero-width spaces and trims the text: '<prompt> \u200b' encodes as the prompt."""
    tok = tm.make_tokenizer()
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("\u200b", ""), normalizers.Strip()])
    return tok


def test_target_without_tokens_is_rejected_by_encode_one(stripping_tok):
    assert "\u200b".strip()  # not whitespace to Python: check_request lets it through, the tokenizer drops it
    with pytest.raises(ValueError, match=r"request 2: target_new='\\u200b' adds no tokens"):
        encode_one(stripping_tok, "The capital of Velaria is", "\u200b", 40, index=2)


@pytest.mark.parametrize("entry", ["apply", "localize"])
def test_target_without_tokens_fails_early(stripping_tok, entry):
    model = tm.make_model("llama", stripping_tok)
    snap = _prepared(model)
    with pytest.raises(ValueError, match="request 1: target_new=.* adds no tokens"):
        _entry(entry)(model, stripping_tok, [REQ, {"prompt": "Kiva speaks", "target_new": "\u200b"}], _hp())
    snap.assert_untouched()


@pytest.mark.parametrize("entry", ["apply", "localize"])
def test_target_longer_than_max_length_fails_early(llama, tiny_tok, entry):
    snap = _prepared(llama)
    with pytest.raises(ValueError, match="request 0: target_new has .* raise max_length"):
        _entry(entry)(llama, tiny_tok, [{"prompt": "Kiva speaks", "target_new": "Paris London Berlin Rome"}],
                      _hp(max_length=4))
    snap.assert_untouched()


BAD_HPARAMS = [
    ("p", 0, ValueError), ("p", -1.0, ValueError), ("p", 100.5, ValueError), ("p", float("nan"), ValueError),
    ("ig_steps", 0, ValueError), ("ig_steps", -2, ValueError), ("ig_steps", 2.5, ValueError),
    ("lr", float("nan"), ValueError), ("lr", float("inf"), ValueError), ("lr", 0.0, ValueError),
    ("lr", -1e-3, ValueError), ("lr", "fast", ValueError), ("lr", None, TypeError),
    ("neuron_axis", "rows", ValueError), ("score_aggregation", "median", ValueError),
    ("selection_scope", "per_head", ValueError), ("layers", [-1], ValueError), ("target_modules", [], ValueError),
    ("max_length", 1, ValueError),
]


@pytest.mark.parametrize("field,value,exc", BAD_HPARAMS, ids=[f"{f}={v!r}" for f, v, _ in BAD_HPARAMS])
def test_bad_hparams_fail_at_construction(field, value, exc):
    with pytest.raises(exc, match=rf"^{field}\b"):
        KNEHyperParams(**{**BASE_HP, field: value})


@pytest.mark.parametrize("entry", ["apply", "localize"])
@pytest.mark.parametrize("field,value,exc", BAD_HPARAMS, ids=[f"{f}={v!r}" for f, v, _ in BAD_HPARAMS])
def test_bad_hparams_set_after_construction_fail_before_touching_the_model(llama, tiny_tok, entry, field, value,
                                                                           exc):
    hp = _hp()
    setattr(hp, field, value)  # validation at construction passed; apply/localize validate again
    snap = _prepared(llama)
    with pytest.raises(exc, match=rf"^{field}\b"):
        _entry(entry)(llama, tiny_tok, [REQ], hp)
    snap.assert_untouched()


@pytest.mark.parametrize("entry", ["apply", "localize"])
@pytest.mark.parametrize("arch,overrides,message", [
    ("llama", dict(target_modules=["mlp.nope"]), r"'mlp\.nope' is not a linear module.*candidates: .*'mlp\.down_proj'"),
    ("llama", dict(layers=[3]), r"layers=\[3\] out of range: the model has 3 blocks"),
    ("gpt2", {}, r"'mlp\.down_proj' is not a linear module .*GPT2LMHeadModel.*candidates: .*'mlp\.c_proj'"),
], ids=["unknown module", "layer out of range", "gpt2 without down_proj"])
def test_modules_the_model_lacks(tiny_tok, entry, arch, overrides, message):
    model = tm.make_model(arch, tiny_tok)
    snap = _prepared(model)
    with pytest.raises(ValueError, match=message):
        _entry(entry)(model, tiny_tok, [REQ], _hp(**overrides))
    snap.assert_untouched()


class NoBlocks(torch.nn.Module):
    """A causal LM without a list of transformer blocks."""

    def __init__(self, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.mlp = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, vocab)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **kwargs):
        raise AssertionError("must fail before any forward pass")


@pytest.mark.parametrize("entry", ["apply", "localize"])
def test_model_without_blocks(tiny_tok, entry):
    model = NoBlocks(len(tiny_tok))
    snap = _prepared(model)
    with pytest.raises(ValueError, match="NoBlocks: found no list of transformer blocks"):
        _entry(entry)(model, tiny_tok, [REQ], _hp())
    snap.assert_untouched()


@pytest.mark.parametrize("text,message", [
    ("alg_name: ROME\nmodel_name: x\n", r"alg_name='ROME', but KNEHyperParams needs alg_name: KNE"),
    ("alg_name: KNE\nmodel_name: x\nig_step: 3\n", r"unknown hparams key\(s\) \['ig_step'\]; allowed keys: .*ig_steps"),
    ("alg_name: KNE\nmodel_name: x\nlr: .nan\n", r"^lr=nan is out of range"),
    ("alg_name: KNE\nmodel_name: x\nneuron_axis: rows\n", r"^neuron_axis='rows' is not allowed"),
])
def test_bad_yaml(tmp_path, text, message):
    path = tmp_path / "KNE.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        KNEHyperParams.from_hparams(path)


# --------------------------------------------------------------------------------------------------------------
# Failures during editing and attribution: the model is left as it was
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def edit_setup(tiny_tok):
    """A tiny Llama with a precomputed two-module ensemble (so that a hook counts training passes only)."""
    model = tm.make_model("llama", tiny_tok)
    hp = _hp(target_modules=["mlp.down_proj", "mlp.up_proj"], layers=[1, 2])
    ensemble = localize(model, tiny_tok, [REQ, REQ2], hp, progress=False)
    assert len(ensemble.neurons) >= 2
    return model, tiny_tok, hp, ensemble


@pytest.mark.parametrize("bad_step", [0, 2])
def test_non_finite_loss_leaves_the_model_unchanged(edit_setup, monkeypatch, bad_step):
    model, tok, hp, ensemble = edit_setup
    real = kne_main.logprobs_at
    calls = [0]

    def nan_from_step(logits, labels, positions):
        logp, mask = real(logits, labels, positions)
        calls[0] += 1
        return (logp * float("nan") if calls[0] > bad_step else logp), mask

    monkeypatch.setattr(kne_main, "logprobs_at", nan_from_step)
    snap = _prepared(model)
    stats = EditStats()
    with pytest.raises(FloatingPointError, match=rf"loss became nan at step {bad_step}; lower lr .*left unchanged"):
        apply_kne_to_model(model, tok, [REQ, REQ2], hp, ensemble=ensemble, return_orig_weights=True, stats=stats)
    assert len(stats.losses) == bad_step + 1
    snap.assert_untouched()


def test_non_finite_update_at_the_last_step_is_not_merged(edit_setup, monkeypatch):
    """The loss is finite at every forward pass but the last backward gives NaN: nothing may be merged."""
    model, tok, hp, ensemble = edit_setup
    real = kne_main.logprobs_at

    def nan_gradient(logits, labels, positions):
        logp, mask = real(logits, labels, positions)
        logp.register_hook(lambda g: torch.full_like(g, float("nan")))
        return logp, mask

    monkeypatch.setattr(kne_main, "logprobs_at", nan_gradient)
    hp.num_steps = 1
    snap = _prepared(model)
    with pytest.raises(FloatingPointError, match="became non-finite after 1 steps.*left unchanged"):
        apply_kne_to_model(model, tok, [REQ], hp, ensemble=ensemble)
    snap.assert_untouched()


def test_overflowing_merge_is_refused(tiny_tok, monkeypatch):
    """A finite fp32 update that overflows the fp16 weight is not written (and earlier modules are put back)."""
    model = tm.make_model("llama", tiny_tok).to(torch.float16)
    hp = _hp(target_modules=["mlp.down_proj", "mlp.up_proj"], num_steps=1)
    ensemble = localize(model, tiny_tok, [REQ], hp, progress=False)
    real = kne_main.SparseUpdate.storage_slices
    seen = []

    def huge_second(self):
        seen.append(self.name)
        dim, delta = real(self)
        return dim, (delta * 1e12 if len(seen) == 2 else delta)

    monkeypatch.setattr(kne_main.SparseUpdate, "storage_slices", huge_second)
    snap = _prepared(model)
    with pytest.raises(FloatingPointError, match=r"would hold non-finite values in torch.float16.*left unchanged"):
        apply_kne_to_model(model, tiny_tok, [REQ], hp, ensemble=ensemble)
    assert len(seen) == 2
    snap.assert_untouched()


FAILURES = {
    "oom": (OOM("CUDA out of memory. Tried to allocate 2.00 GiB"), OOM),
    "interrupt": (KeyboardInterrupt(), KeyboardInterrupt),
    "error": (RuntimeError("device lost"), RuntimeError),
}


@pytest.mark.parametrize("step", [0, 2])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_failure_during_training_leaves_the_model_unchanged(edit_setup, failure, step):
    model, tok, hp, ensemble = edit_setup
    exc, expected = FAILURES[failure]
    snap = _prepared(model)
    stats = EditStats()
    handle = _fail_at_call(model.model.layers[2], step, exc)
    try:
        with pytest.raises(expected) as info:
            apply_kne_to_model(model, tok, [REQ, REQ2], hp, ensemble=ensemble, return_orig_weights=True,
                               stats=stats)
    finally:
        handle.remove()
    assert len(stats.losses) == step  # the failure came at the forward pass of step `step`
    if failure == "oom":
        message = str(info.value)
        assert "out of memory during training" in message and "the model was left unchanged" in message
        assert "ig_batch_size" in message and "batch_size" in message and "Tried to allocate 2.00 GiB" in message
        assert info.value.__cause__ is exc
    elif failure == "error":
        assert info.value is exc
    snap.assert_untouched()


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failure_inside_merge_puts_back_the_modules_already_written(edit_setup, monkeypatch, failure):
    model, tok, hp, ensemble = edit_setup
    exc, expected = FAILURES[failure]
    snap = _prepared(model)
    real = kne_main.SparseUpdate.storage_slices
    seen, first_written = [], []

    def fail_on_second(self):
        seen.append(self)
        if len(seen) == 2:
            first = seen[0]
            first_written.append(not torch.equal(first.module.weight, snap.state[f"{first.name}.weight"]))
            raise exc
        return real(self)

    monkeypatch.setattr(kne_main.SparseUpdate, "storage_slices", fail_on_second)
    with pytest.raises(expected) as info:
        apply_kne_to_model(model, tok, [REQ, REQ2], hp, ensemble=ensemble, return_orig_weights=True)
    assert first_written == [True]  # the failure came after a module had really been changed
    if failure == "oom":
        assert "out of memory during merge" in str(info.value) and "left unchanged" in str(info.value)
    snap.assert_untouched()


@pytest.mark.parametrize("method", ["fast", "naive"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_failure_during_attribution_leaves_the_model_unchanged(llama, tiny_tok, method, failure):
    exc, expected = FAILURES[failure]
    snap = _prepared(llama)
    # ig_batch_size=2: one (module, step) pair per pass, so the second call is mid-attribution (naive: while
    # the first module's weight is scaled to 2/3)
    hp = _hp(ig_batch_size=2)
    handle = _fail_at_call(llama.model.layers[2], 1, exc)
    try:
        with pytest.raises(expected):
            localize(llama, tiny_tok, [REQ, REQ2], hp, method=method, progress=False)
    finally:
        handle.remove()
    snap.assert_untouched()


def test_oom_during_localization_inside_apply(llama, tiny_tok):
    snap = _prepared(llama)
    handle = _fail_at_call(llama.model.layers[0], 0, OOM("out of memory"))
    try:
        with pytest.raises(OOM, match=r"during localization.*left unchanged\. Lower ig_batch_size \(now 64\)"):
            apply_kne_to_model(llama, tiny_tok, [REQ], _hp(), return_orig_weights=True)
    finally:
        handle.remove()
    snap.assert_untouched()


# --------------------------------------------------------------------------------------------------------------
# Over-long prompts: cut from the left, with a warning, to the same tokens everywhere
# --------------------------------------------------------------------------------------------------------------
def test_encode_one_cuts_long_prompts_from_the_left(tiny_tok):
    prompt_ids = tiny_tok(LONG_PROMPT)["input_ids"]
    full = tiny_tok(f"{LONG_PROMPT} Olvi")["input_ids"]
    target_ids = full[len(prompt_ids):]
    assert len(full) > 12
    with pytest.warns(UserWarning, match=rf"request 3: {len(full)} tokens exceed max_length=12; the prompt is cut"):
        enc = encode_one(tiny_tok, LONG_PROMPT, "Olvi", 12, index=3)
    assert len(enc.ids) == 12 and enc.ids[0] == tiny_tok.bos_token_id
    assert enc.ids[enc.n_prompt:] == target_ids  # the target is never cut
    assert enc.ids[1:enc.n_prompt] == prompt_ids[-(12 - 1 - len(target_ids)):]  # the end of the prompt is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text that fits is not cut and not warned about
        short = encode_one(tiny_tok, REQ["prompt"], REQ["target_new"], 12)
    assert short.ids == tiny_tok("The capital of Velaria is Morn")["input_ids"]


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_long_prompt_gives_the_same_tokens_to_attribution_and_training(llama, tiny_tok, method):
    hp = _hp(max_length=12, num_steps=2)
    request = {"prompt": LONG_PROMPT, "target_new": "Olvi"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = encode_one(tiny_tok, LONG_PROMPT, "Olvi", 12).ids
    seen = []
    handle = llama.get_input_embeddings().register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        with pytest.warns(UserWarning) as record:
            ensemble = localize(llama, tiny_tok, [request], hp, method=method, progress=False)
            n_attribution = len(seen)
            apply_kne_to_model(llama, tiny_tok, [request], hp, ensemble=ensemble)
    finally:
        handle.remove()
    attribution, training = seen[:n_attribution], seen[n_attribution:]
    assert attribution and training
    # the fast attribution feeds all but the last token (it predicts nothing scored); the naive reference, which
    # computes F from the definition on its own encoding, may feed the whole text; training feeds the whole text
    allowed = [[expected[:-1]]] + ([[expected]] if method == "naive" else [])
    assert all(ids.tolist() in allowed for ids in attribution), [ids.tolist() for ids in attribution[:2]]
    assert all(ids.tolist() == [expected] for ids in training)
    cut = [str(w.message) for w in record if "exceed max_length" in str(w.message)]
    # once per step (the naive reference encodes on its own and cuts silently, the same tokens), the same message
    assert len(cut) == (1 if method == "naive" else 2) and len(set(cut)) == 1, cut


# --------------------------------------------------------------------------------------------------------------
# Cache: damaged files, concurrent processes, no unpickling anywhere
# --------------------------------------------------------------------------------------------------------------
class _Target:
    def __init__(self, name):
        self.name = name


def _damage_empty(cache, key):
    pathlib.Path(cache.path(key)).write_bytes(b"")


def _damage_no_checksum(cache, key):
    from safetensors.torch import save_file

    save_file({"m": torch.ones(4)}, cache.path(key), metadata={"version": "1"})


def _damage_other_modules(cache, key):
    ScoreCache(cache.dir, fingerprint="f").put(key, {"other": torch.ones(4)})  # valid file, wrong module set


@pytest.mark.parametrize("damage", [_damage_empty, _damage_no_checksum, _damage_other_modules],
                         ids=["empty", "no checksum", "other modules"])
def test_cache_files_that_cannot_be_trusted_are_recomputed(tmp_path, damage):
    cache = ScoreCache(tmp_path, fingerprint="f")
    key, targets = "ab" * 32, [_Target("m")]
    cache.put(key, {"m": torch.arange(4.0)})
    damage(cache, key)
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        assert cache.get(key, targets) is None
    assert cache.misses == 1
    cache.put(key, {"m": torch.arange(4.0)})
    assert torch.equal(cache.get(key, targets)["m"], torch.arange(4.0)) and cache.hits == 1


def test_processes_sharing_a_cache_dir_leave_valid_files(tmp_path):
    """Two spawned processes write 3 keys × 8 versions through `ScoreCache.put` while this process reads.

    (Two, not more: each spawned process spends seconds importing torch on a busy machine.)"""
    cache = ScoreCache(tmp_path / "cache", fingerprint="f")
    keys = [c * 64 for c in "abc"]
    targets = [_Target("m"), _Target("n")]

    def version(v):
        return {"m": torch.full((4096,), float(v)), "n": torch.arange(512.0) * v}

    def consistent(got):
        v = got["m"][0].item()
        return torch.equal(got["m"], version(v)["m"]) and torch.equal(got["n"], version(v)["n"])

    tasks = [(key, version(v)) for v in range(8) for key in keys]
    reads = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            result = pool.starmap_async(cache.put, tasks, chunksize=1)
            while not result.ready():  # read while the writers write
                reads += [got for got in (cache.get(key, targets) for key in keys) if got is not None]
                time.sleep(0.002)  # leave the CPU to the writers
            result.get(timeout=120)
    assert [str(w.message) for w in caught if "unreadable" in str(w.message)] == []
    assert all(consistent(got) for got in reads)
    final = [cache.get(key, targets) for key in keys]
    assert all(got is not None and consistent(got) for got in final)
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert files == sorted(f"{key}.safetensors" for key in keys)  # no temp file left behind


UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader"}


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _unsafe_loading(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom):
            root, names = (node.module or "").split(".")[0], {a.name for a in node.names}
            if (root in UNPICKLING_MODULES or root == "yaml" and names & UNSAFE_YAML
                    or root == "torch" and "load" in names):
                found.append(f"from {node.module} import {sorted(names)}")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name.split(".")[0] in UNPICKLING_MODULES or "pickle" in node.attr.lower():
                found.append(name)
            elif name.split(".")[0] == "yaml" and node.attr in UNSAFE_YAML:
                found.append(name)
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if name == "torch.load" or name.endswith(".torch.load"):
                safe = kwargs.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{name}(...) without weights_only=True")
            allow = kwargs.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{name}(..., allow_pickle=...)")
    return found


def test_the_checker_catches_unsafe_loading():
    bad = ["import pickle", "import dill as d", "from yaml import unsafe_load", "from torch import load",
           "torch.load(p)", "torch.load(p, weights_only=False)", "yaml.load(f)", "yaml.unsafe_load(f)",
           "yaml.load(f, Loader=yaml.Loader)", "np.load(p, allow_pickle=True)", "pd.read_pickle(p)"]
    assert [line for line in bad if not _unsafe_loading(ast.parse(line))] == []
    good = "torch.load(p, weights_only=True)\nyaml.safe_load(f)\nnp.load(p)\nfrom yaml import safe_load\n"
    assert _unsafe_loading(ast.parse(good)) == []


def test_package_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    found = {str(f.relative_to(PACKAGE)): hits for f in files if (hits := _unsafe_loading(ast.parse(f.read_text())))}
    assert found == {}


def test_hparams_yaml_cannot_construct_python_objects(tmp_path):
    import yaml

    path = tmp_path / "KNE.yaml"
    path.write_text("alg_name: KNE\nmodel_name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(yaml.YAMLError, match="python/object"):
        KNEHyperParams.from_hparams(path)


# --------------------------------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,modules", [("llama", ["mlp.down_proj", "mlp.up_proj"]), ("gpt2", ["mlp.c_proj"])])
def test_same_seed_gives_bit_identical_ensemble_and_weights(tiny_tok, arch, modules):
    runs = []
    for run in range(2):
        torch.manual_seed(1000 + run)  # the global RNG state differs between the runs; hparams.seed rules
        model = tm.make_model(arch, tiny_tok, seed=0)
        original = {k: v.clone() for k, v in model.state_dict().items()}
        hp = _hp(target_modules=modules, seed=7, num_steps=5)
        ensemble = localize(model, tiny_tok, [REQ, REQ2], hp, progress=False)
        stats = EditStats()
        apply_kne_to_model(model, tiny_tok, [REQ, REQ2], hp, stats=stats)
        runs.append((ensemble, model.state_dict(), stats.losses, original))
    (ens_a, state_a, losses_a, original), (ens_b, state_b, losses_b, _) = runs
    assert ens_a.neurons.keys() == ens_b.neurons.keys()
    assert all(torch.equal(ens_a.neurons[k], ens_b.neurons[k]) for k in ens_a.neurons)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses_a == losses_b
    assert any(not torch.equal(state_a[k], original[k]) for k in state_a)  # the edit did change something


# --------------------------------------------------------------------------------------------------------------
# Property: whatever the request text and settings, weights_copy restores the exact original
# --------------------------------------------------------------------------------------------------------------
WORDS = sorted({w for f in tm.FACTS for w in f["prompt"].split() + [f["target_new"]]} | set(tm.EXTRA_WORDS))
_words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)
_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)
_prompts = st.one_of(_words, _text, st.tuples(_words, _text).map(" ".join))
_targets = st.one_of(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
                     st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=5))
_requests = st.lists(st.fixed_dictionaries({"prompt": _prompts, "target_new": _targets}), min_size=1, max_size=2)


@pytest.fixture(scope="module")
def property_model():
    tok = tm.make_tokenizer()
    return tm.make_model("llama", tok, num_hidden_layers=2), tok


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=_requests, p=st.floats(min_value=0.5, max_value=100.0), ig_steps=st.integers(1, 4),
       num_steps=st.integers(1, 3), axis=st.sampled_from(["auto", "in", "out"]),
       modules=st.sampled_from([["mlp.down_proj"], ["mlp.up_proj", "mlp.down_proj"], ["self_attn.o_proj"]]))
def test_weights_copy_restores_the_exact_original(property_model, requests, p, ig_steps, num_steps, axis, modules):
    model, tok = property_model
    snap = Snapshot(model)
    hp = KNEHyperParams(model_name="x", p=p, ig_steps=ig_steps, num_steps=num_steps, neuron_axis=axis,
                        target_modules=modules, lr=0.1, t_loss=0.0, ig_batch_size=8)
    well_formed = all(r["prompt"].strip() and r["target_new"].strip() for r in requests)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long random text is cut to max_length, with a warning
        try:
            edited, weights_copy = apply_kne_to_model(model, tok, requests, hp, return_orig_weights=True)
        except ValueError as err:  # a refusal touches nothing
            assert not well_formed or "selected no neuron" in str(err), err
            snap.assert_untouched()
            return
    assert well_formed and edited is model and weights_copy
    assert all(math.isfinite(v.float().sum().item()) for v in weights_copy.values())
    with torch.no_grad():
        for name, value in weights_copy.items():
            model.get_parameter(name).copy_(value)
    snap.assert_untouched()
