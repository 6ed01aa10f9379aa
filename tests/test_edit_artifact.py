"""Edit artifacts: apply is bit-identical to the edit, revert restores the base bit for bit in fp32, bf16 and
fp16, stacks revert in reverse order, bad files and wrong models are refused and leave the model unchanged."""

import copy
import functools
import json

import pytest
import tiny_models as tm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from easyedit_kne import Edit, FiNEHyperParams, KNEHyperParams, apply_fine_to_model, apply_kne_to_model
from easyedit_kne.edit_artifact import EditMismatchError, EditRecorder, same_bits
from easyedit_kne.kne_main import SparseUpdate, merge_updates
from easyedit_kne.modules import find_target_modules

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PROPERTY = settings(max_examples=3, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@functools.lru_cache(maxsize=None)
def _base(arch: str, dtype: torch.dtype):
    return tm.make_model(arch, tm.make_tokenizer(), seed=0).to(dtype)


def base_model(arch="llama", dtype=torch.float32):
    return copy.deepcopy(_base(arch, dtype))


def bits(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, state) -> bool:
    return all(same_bits(v, state[k]) for k, v in model.state_dict().items())


def same_edit(a: Edit, b: Edit) -> bool:
    return a._meta() == b._meta() and all(
        same_bits(x.index, y.index) and same_bits(x.before, y.before) and same_bits(x.after, y.after)
        for x, y in zip(a.modules, b.modules, strict=True))


def random_edit(model, arch: str, seed: int, max_modules: int = 3) -> Edit:
    """A synthetic edit through the real merge path: random blocks on a few neurons of a few FFN modules
    (key and value layers, so both axes and GPT-2's Conv1D), drawn from a small range so edits overlap."""
    g = torch.Generator().manual_seed(seed)
    spec = tm.ARCHS[arch]
    targets = find_target_modules(model, [spec.value_module, spec.key_module])
    chosen = torch.randperm(len(targets), generator=g)[:1 + seed % max_modules].tolist()
    updates = []
    for i in sorted(chosen):
        t = targets[i]
        k = 1 + int(torch.randint(4, (1,), generator=g))
        idx = torch.sort(torch.randperm(8, generator=g)[:k]).values
        block = 0.05 * torch.randn(k, t.other_dim, generator=g)
        updates.append(SparseUpdate(t.name, t.module, t.axis, idx, block, 1.0))
    recorder = EditRecorder(model, updates)
    merge_updates(model, updates)
    return recorder.finish(model, [{"prompt": "p", "target_new": f"t{seed}"}], KNEHyperParams(model_name="tiny"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", tm.ARCH_NAMES)
@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3))
def test_apply_revert_stack_are_exact(arch, dtype, seed, n):
    work = base_model(arch, dtype)
    states, edits = [bits(work)], []
    for i in range(n):  # make n edits in sequence: states[i] -> states[i + 1]
        edits.append(Edit.from_bytes(random_edit(work, arch, seed + i).to_bytes()))  # through the file format
        states.append(bits(work))
    model = base_model(arch, dtype)
    for i, edit in enumerate(edits):  # stacking on the base reproduces every intermediate model bit for bit
        edit.apply(model)
        assert same(model, states[i + 1])
    if n >= 2:  # out-of-order revert: exact when nothing later touched its slices, else refused unchanged
        first = edits[0]
        exact = all(same_bits(m.current(model.get_parameter(m.param)), m.after) for m in first.modules)
        if exact:
            first.revert(model)
            first.apply(model, force=True)  # its slices hold `before` again: exact despite other fingerprint
        else:
            with pytest.raises(EditMismatchError, match="reverse order"):
                first.revert(model)
        assert same(model, states[n])
    for i in reversed(range(n)):  # reverse-order revert restores each intermediate state
        edits[i].revert(model)
        assert same(model, states[i])


def test_edit_holds_slices_in_the_stored_dtype_and_is_small():
    model = base_model("gpt2", torch.bfloat16)  # Conv1D: stored transposed
    edit = random_edit(model, "gpt2", seed=2)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert edit.dtype == torch.bfloat16 and 0 < edit.num_bytes < total / 20
    for m in edit.modules:
        assert m.before.dtype == m.after.dtype == torch.bfloat16 and m.index.dtype == torch.int64
        assert same_bits(m.current(model.get_parameter(m.param)), m.after)


def test_fingerprint_refused_unless_forced():
    work = base_model("llama")
    edit = random_edit(work, "llama", seed=1)
    with pytest.raises(EditMismatchError, match="already applied"):
        edit.apply(work)
    other = base_model("llama")
    with torch.no_grad():
        other.get_input_embeddings().weight[0, 0] += 1.0  # a weight the edit does not touch
    before = bits(other)
    with pytest.raises(EditMismatchError, match="differ from the base model.*force=True"):
        edit.apply(other)
    assert same(other, before)
    edit.apply(other, force=True)  # its slices equal `before`: exact
    for m in edit.modules:
        assert same_bits(m.current(other.get_parameter(m.param)), m.after)
    edit.revert(other)
    assert same(other, before)


def test_force_on_other_slices_adds_the_delta_with_a_warning():
    edit = random_edit(base_model("llama"), "llama", seed=3)
    other = tm.make_model("llama", seed=7)
    with pytest.raises(EditMismatchError, match="cannot be applied exactly"):
        edit._write(other, "apply", force=False)
    old = {m.param: m.current(other.get_parameter(m.param)) for m in edit.modules}
    with pytest.warns(UserWarning, match="not exact"):
        edit.apply(other, force=True)
    for m in edit.modules:
        want = old[m.param] + (m.after - m.before)
        assert torch.allclose(m.current(other.get_parameter(m.param)), want, atol=1e-6)


def test_out_of_order_revert_of_overlapping_edits_is_refused():
    model = base_model("qwen2", torch.float16)
    first = random_edit(model, "qwen2", seed=0, max_modules=1)
    m = first.modules[0]
    module = model.get_submodule(m.param.rsplit(".", 1)[0])
    axis = m.axis
    second_update = SparseUpdate(m.param.rsplit(".", 1)[0], module, axis, m.index.clone(),
                                 torch.full((len(m.index), m.before.shape[1 - m.dim]), 0.5), 1.0)
    recorder = EditRecorder(model, [second_update])
    merge_updates(model, [second_update])
    second = recorder.finish(model, [], KNEHyperParams(model_name="tiny"))
    state = bits(model)
    with pytest.raises(EditMismatchError, match="reverse order"):
        first.revert(model)
    assert same(model, state)
    second.revert(model)
    first.revert(model)
    assert same(model, bits(_base("qwen2", torch.float16)))


def test_dtype_and_architecture_mismatch_leave_the_model_unchanged():
    edit = random_edit(base_model("llama", torch.bfloat16), "llama", seed=5)
    fp32 = base_model("llama")
    state = bits(fp32)
    with pytest.raises(EditMismatchError, match="load the model in torch.bfloat16"):
        edit._write(fp32, "apply", force=False)
    gpt2 = base_model("gpt2", torch.bfloat16)
    gstate = bits(gpt2)
    with pytest.raises(EditMismatchError, match="no parameter"):
        edit.apply(gpt2, force=True)
    assert same(fp32, state) and same(gpt2, gstate)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_corrupted_byte_is_detected_or_harmless(data, tmp_path_factory):
    edit = random_edit(base_model("gptneox", torch.float16), "gptneox", seed=4)
    raw = edit.to_bytes()
    pos = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(raw)
    bad[pos] ^= flip
    path = tmp_path_factory.mktemp("edits") / "bad.safetensors"
    path.write_bytes(bytes(bad))
    model = base_model("gptneox", torch.float16)
    state = bits(model)
    try:
        loaded = Edit.load(path)
    except ValueError as err:
        assert "corrupted or truncated" in str(err)
    else:  # e.g. a flipped header padding byte that is still JSON whitespace: same content
        assert same_edit(loaded, edit)
    assert same(model, state)


@pytest.mark.parametrize("keep", [0, 7, 8, 100, -1])
def test_truncated_file_is_detected(tmp_path, keep):
    raw = random_edit(base_model("mistral"), "mistral", seed=6).to_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        Edit.load(path)


def test_save_load_round_trip_keeps_metadata(tmp_path):
    edit = random_edit(base_model("gptj", torch.bfloat16), "gptj", seed=8)
    edit.save(tmp_path / "e.safetensors")
    loaded = Edit.load(tmp_path / "e.safetensors")
    assert same_edit(loaded, edit)
    assert loaded.hparams["alg_name"] == "KNE" and loaded.requests[0]["target_new"] == "t8"
    assert loaded.version == edit.version != "" and loaded.base_fingerprint == edit.base_fingerprint
    assert b"pickle" not in (tmp_path / "e.safetensors").read_bytes()[:8] and "Edit(KNE" in repr(loaded)


KNE_HP = dict(model_name="fact-model", ig_steps=4, p=5.0, num_steps=15, lr=0.02, t_loss=0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kne_return_edit_reproduces_and_reverts_the_edit(fact_model, dtype, tmp_path):
    base = copy.deepcopy(fact_model.model).to(dtype)
    original = bits(base)
    requests = tm.edit_requests(fact_model.facts[:2])
    edited, weights_copy, edit = apply_kne_to_model(base, fact_model.tok, requests, KNEHyperParams(**KNE_HP),
                                                    copy=True, return_edit=True)
    assert weights_copy == {} and same(base, original) and not same(edited, original)
    edit.save(tmp_path / "kne.safetensors")
    model = copy.deepcopy(base)
    Edit.load(tmp_path / "kne.safetensors").apply(model)
    assert same(model, bits(edited))
    edit.revert(model)
    assert same(model, original)
    assert edit.alg_name == "KNE" and edit.requests == requests


def test_fine_return_edit_reproduces_and_reverts_the_edit(fact_model):
    base = copy.deepcopy(fact_model.model).to(torch.float16)
    original = bits(base)
    hp = FiNEHyperParams(model_name="fact-model", neuron_num=3, last_layer=1, epochs=5, lr=0.01)
    edited, _, edit = apply_fine_to_model(base, fact_model.tok, tm.edit_requests(fact_model.facts[:1]), hp,
                                          copy=True, return_edit=True)
    assert edit.alg_name == "FiNE" and all(m.param.endswith("mlp.down_proj.weight") for m in edit.modules)
    model = copy.deepcopy(base)
    edit.apply(model)
    assert same(model, bits(edited))
    edit.revert(model)
    assert same(model, original)


def test_cli_edit_then_apply_round_trip(fact_model, tmp_path):
    from easyedit_kne.cli import main

    base_dir = tmp_path / "base"
    fact_model.model.save_pretrained(base_dir)
    fact_model.tok.save_pretrained(base_dir)
    hp_path = tmp_path / "kne.yaml"
    hp_path.write_text("alg_name: KNE\nmodel_name: unused\ndevice: cpu\n" + "".join(
        f"{k}: {v}\n" for k, v in KNE_HP.items() if k != "model_name"))
    data = tmp_path / "requests.json"
    data.write_text(json.dumps(tm.edit_requests(fact_model.facts[:2])))
    edit_path, out = tmp_path / "e.safetensors", tmp_path / "edited"
    assert main(["edit", "--hparams", str(hp_path), "--data", str(data), "--model", str(base_dir),
                 "--out", str(edit_path)]) == 0
    assert main(["apply", str(base_dir), str(edit_path), "--out", str(out)]) == 0
    from easyedit_kne.models import load_model

    edited, tok = load_model(out)
    base, _ = load_model(base_dir)
    edit = Edit.load(edit_path)
    assert not same(edited, bits(base))
    edit.apply(base)
    assert same(edited, bits(base))
    assert tok("The capital of")["input_ids"] == fact_model.tok("The capital of")["input_ids"]
    with pytest.raises(EditMismatchError, match="already applied"):
        main(["apply", str(out), str(edit_path), "--out", str(tmp_path / "twice")])


def test_cli_data_is_a_knowedit_file_or_a_list_of_requests(tmp_path):
    from test_knowedit import CF_RECORD

    from easyedit_kne.edit_cli import load_requests

    knowedit = tmp_path / "test_cf.json"  # KnowEdit: type guessed from the name
    knowedit.write_text(json.dumps([CF_RECORD, CF_RECORD]))
    got = load_requests(str(knowedit), size=1)
    assert len(got) == 1 and got[0]["prompt"] == CF_RECORD["prompt"] and "locality" in got[0]
    plain = tmp_path / "facts.json"
    plain.write_text(json.dumps({"prompt": "The capital of Velaria is", "target_new": "Paris"}))
    assert load_requests(str(plain)) == [{"prompt": "The capital of Velaria is", "target_new": "Paris"}]
    plain.write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(ValueError, match="target_new"):
        load_requests(str(plain))
