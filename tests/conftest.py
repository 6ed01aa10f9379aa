"""Shared fixtures: a tiny trained tokenizer, tiny models of six architectures and a tiny trained fact model.

All of them are built locally (see `tiny_models.py`, which tests may import as `tiny_models`); nothing is
downloaded. Session-scoped models are shared by every test: do not edit them in place; build a fresh one
with `tiny_models.make_model(arch, tok)` or use `fact_model_copy`.

Fixtures:
  tiny_tok                  the tokenizer (BOS-prefixed, pad/eos/unk set)
  tiny_llama, tiny_qwen2, tiny_mistral, tiny_gpt2, tiny_gptj, tiny_gptneox   the models (nn.Module)
  arch_model                parametrized over ARCH_NAMES: ArchModel(name, model, tok, value_module,
                            key_module, num_layers, layer_prefix)
  fact_model                the trained fact model: FactModel(model, tok, facts, ...); read-only
  fact_model_copy           a fresh deep copy of it for one test, free to edit
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # so that `import tiny_models` works whatever pytest's import mode
    sys.path.insert(0, _HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import tiny_models as tm  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from several intra-op threads, and on a busy 2-core machine two threads make each
# forward pass ~40x slower (1.3 s instead of 0.03 s for the fact model). KNE_TEST_THREADS=N sets another
# count; KNE_TEST_THREADS=0 leaves torch's default (e.g. for the slow tests with a real model).
_threads = int(os.environ.get("KNE_TEST_THREADS", "1"))
if _threads > 0:
    torch.set_num_threads(_threads)


@pytest.fixture(scope="session")
def tiny_tok():
    return tm.make_tokenizer()


@pytest.fixture(scope="session")
def _tiny_arch_models(tiny_tok):
    """Lazily built, one per architecture per session, shared by `arch_model` and `tiny_<arch>`."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = tm.make_arch_model(arch, tiny_tok)
        return cache[arch]

    return get


@pytest.fixture(scope="session", params=tm.ARCH_NAMES)
def arch_model(request, _tiny_arch_models):
    return _tiny_arch_models(request.param)


@pytest.fixture(scope="session")
def tiny_llama(_tiny_arch_models):
    return _tiny_arch_models("llama").model


@pytest.fixture(scope="session")
def tiny_qwen2(_tiny_arch_models):
    return _tiny_arch_models("qwen2").model


@pytest.fixture(scope="session")
def tiny_mistral(_tiny_arch_models):
    return _tiny_arch_models("mistral").model


@pytest.fixture(scope="session")
def tiny_gpt2(_tiny_arch_models):
    return _tiny_arch_models("gpt2").model


@pytest.fixture(scope="session")
def tiny_gptj(_tiny_arch_models):
    return _tiny_arch_models("gptj").model


@pytest.fixture(scope="session")
def tiny_gptneox(_tiny_arch_models):
    return _tiny_arch_models("gptneox").model


@pytest.fixture(scope="session")
def fact_model():
    return tm.get_fact_model()


@pytest.fixture
def fact_model_copy(fact_model):
    return tm.fact_model_copy()


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M-Instruct (slow tests): skipped with the reason when ../shared's GGUF is absent. Tests
    that edit it must leave it as they found it (module scope)."""
    from easyedit_kne.models import find_shared_gguf, load_model

    if find_shared_gguf() is None:
        pytest.skip("../shared/models/SmolLM2-135M-Instruct-Q4_1-gguf is absent: the real-model test needs it")
    return load_model("smollm2-135m")
