"""Tiny tokenizer and models for the test suite, built locally (nothing comes from the Hugging Face hub).

Everything here is a plain function so that tests and scripts can use it without pytest; `conftest.py`
wraps the same functions in fixtures.

* `make_tokenizer()`: a byte-level BPE tokenizer trained (in well under a second, once per process) on the
  synthetic fact corpus below, wrapped as a `transformers` fast tokenizer. Like a Llama tokenizer it puts
  `<s>` (BOS) in front of every encoded text and adds no EOS. Every word of the corpus (and of
  `EXTRA_WORDS`) is a single token, with its leading space (`"Ġword"`) when it follows a space; any other
  text still encodes, split into smaller pieces (the byte alphabet is in the vocabulary, so there is no
  unknown token in practice).
* `make_model(arch, tok, seed=0, **overrides)`: a fresh, randomly initialised tiny causal LM of one of the
  `ARCH_NAMES` (fp32, eval mode, eager attention), with `overrides` passed to its config.
* `get_fact_model()`: a tiny Llama trained (once per process, a few seconds) to answer the `FACTS`;
  `fact_model_copy()` gives a deep copy that a test may edit freely.
"""

from __future__ import annotations

import copy
import functools
import time
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0, 1, 2, 3

# ----------------------------------------------------------------------------------------------------------
# Synthetic facts. Subjects and most answers are invented words so that nothing depends on real knowledge.
# Each relation: (name, prompt template, rephrase template, [(subject, answer), ...]). Answers within a
# relation are distinct, so `target_new` (the answer of the next fact of the same relation) always differs
# from `target_true` and is an answer the model already knows how to produce.
# ----------------------------------------------------------------------------------------------------------
RELATIONS = [
    ("capital", "The capital of {} is", "{} has its capital in", [
        ("Velaria", "Morn"), ("Drossland", "Tarsk"), ("Quenmar", "Olvi"), ("Brevia", "Kessa"),
        ("Lutania", "Vorn"), ("Ostrel", "Pallan"), ("Zemora", "Irith"), ("Caldon", "Ruvo"),
    ]),
    ("ceo", "The CEO of {} is", "The company {} is run by", [
        ("Zentor", "Alice"), ("Plexa", "Bob"), ("Vantrix", "Carol"), ("Ombrix", "David"),
        ("Quorra", "Emma"), ("Selvon", "Frank"), ("Tiberon", "Grace"), ("Nuvexa", "Henry"),
    ]),
    ("language", "{} speaks", "The language spoken by {} is", [
        ("Kiva", "Dutch"), ("Joren", "French"), ("Mila", "German"), ("Tadeo", "Italian"),
        ("Soren", "Spanish"), ("Anouk", "Polish"), ("Lior", "Greek"), ("Yuna", "Swedish"),
    ]),
    ("color", "The favorite color of {} is", "{} likes the color", [
        ("Brann", "red"), ("Celis", "blue"), ("Dorin", "green"), ("Elska", "yellow"),
        ("Faro", "purple"), ("Gilen", "orange"), ("Hest", "black"), ("Ismo", "white"),
    ]),
]

# More words in the vocabulary (one token each), most of them in no fact: handy as counterfactual targets
# that the fact model has never produced, or for free-form prompts in tests.
EXTRA_WORDS = (
    "Paris London Berlin Rome Tokyo Madrid Lisbon Oslo English Japanese Chinese Russian Korean Zoe Ivan "
    "Maria John Peter Olga gold silver cat dog apple river mountain city country language company person "
    "Who What Where When Which Why How who what where when which why how the a an of is was are in on "
    "and or not to by for with has have had its his her their it he she they this that new old "
    "capital CEO speaks color favorite"
).split()


def _build_facts():
    facts = []
    for relation, template, rephrase, pairs in RELATIONS:
        for i, (subject, answer) in enumerate(pairs):
            new = pairs[(i + 1) % len(pairs)][1]
            facts.append({
                "prompt": template.format(subject),
                "target_true": answer,
                "target_new": new,
                "ground_truth": answer,  # EasyEdit's name for the true answer
                "subject": subject,
                "relation": relation,
                "rephrase_prompt": rephrase.format(subject),
            })
    return facts


FACTS = _build_facts()


def fact_sentences(facts=None, rephrases: bool = True) -> list[str]:
    """The training sentences: `f"{prompt} {target_true}."` (and the same for each rephrase prompt)."""
    facts = FACTS if facts is None else facts
    out = [f"{f['prompt']} {f['target_true']}." for f in facts]
    if rephrases:
        out += [f"{f['rephrase_prompt']} {f['target_true']}." for f in facts]
    return out


def tokenizer_corpus() -> list[str]:
    lines = fact_sentences()
    lines += [f"{f['prompt']} {f['target_new']}." for f in FACTS]
    words = sorted({w.strip(".") for line in lines for w in line.split()} | set(EXTRA_WORDS))
    lines.append("a " + " ".join(words))  # every word also after a space ("Ġword"), e.g. "The", "Paris"
    lines.append(" ".join(f"{w}." for w in words))
    return lines


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tk = Tokenizer(models.BPE(unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,  # more than enough: merging stops once every corpus word is one token
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos_id = tk.token_to_id(BOS)
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)])
    return tk.to_str()


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A fresh tokenizer object (the trained vocabulary is cached; the wrapper is new on every call)."""
    tk = Tokenizer.from_str(_tokenizer_json())
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=256, padding_side="right", clean_up_tokenization_spaces=False)
    return tok


# ----------------------------------------------------------------------------------------------------------
# Tiny models of several architectures
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchSpec:
    config_cls: str
    model_cls: str
    layer_prefix: str  # the ModuleList of blocks: f"{layer_prefix}.{i}" is block i
    value_module: str  # FFN output projection inside a block (its inputs are the FFN neurons)
    key_module: str  # FFN input projection inside a block (its outputs are the FFN neurons)
    config: dict = field(default_factory=dict)


_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=256)

ARCHS = {
    "llama": ArchSpec("LlamaConfig", "LlamaForCausalLM", "model.layers", "mlp.down_proj", "mlp.up_proj",
                      dict(_LLAMA_LIKE, num_hidden_layers=3)),
    "qwen2": ArchSpec("Qwen2Config", "Qwen2ForCausalLM", "model.layers", "mlp.down_proj", "mlp.up_proj",
                      dict(_LLAMA_LIKE, num_hidden_layers=2)),
    "mistral": ArchSpec("MistralConfig", "MistralForCausalLM", "model.layers", "mlp.down_proj", "mlp.up_proj",
                        dict(_LLAMA_LIKE, num_hidden_layers=2)),
    "gpt2": ArchSpec("GPT2Config", "GPT2LMHeadModel", "transformer.h", "mlp.c_proj", "mlp.c_fc",
                     dict(n_embd=32, n_inner=128, n_head=4, n_layer=3, n_positions=256)),
    "gptj": ArchSpec("GPTJConfig", "GPTJForCausalLM", "transformer.h", "mlp.fc_out", "mlp.fc_in",
                     dict(n_embd=32, n_inner=128, n_head=4, n_layer=2, n_positions=256, rotary_dim=4)),
    "gptneox": ArchSpec("GPTNeoXConfig", "GPTNeoXForCausalLM", "gpt_neox.layers", "mlp.dense_4h_to_h",
                        "mlp.dense_h_to_4h",
                        dict(hidden_size=32, intermediate_size=128, num_attention_heads=4,
                             num_hidden_layers=2, max_position_embeddings=256)),
}
ARCH_NAMES = tuple(ARCHS)

ArchModel = namedtuple("ArchModel", "name model tok value_module key_module num_layers layer_prefix")


def _num_layers(config) -> int:
    return config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer


def make_model(arch: str, tok=None, seed: int = 0, **overrides):
    """A fresh tiny `arch` model (fp32, eval mode, eager attention), initialised from `seed`.

    `overrides` go to the config (use that architecture's own names, e.g. `num_hidden_layers=4` for Llama,
    `n_layer=4` for GPT-2). The global RNG state is left as it was.
    """
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; choose from {ARCH_NAMES}")
    tok = make_tokenizer() if tok is None else tok
    spec = ARCHS[arch]
    kwargs = dict(spec.config)
    kwargs.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, initializer_range=0.1,
                  attn_implementation="eager")  # the one every architecture here supports
    kwargs.update(overrides)
    config = getattr(transformers, spec.config_cls)(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_cls)(config)
    model.to(torch.float32).eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model


make_llama = functools.partial(make_model, "llama")
make_qwen2 = functools.partial(make_model, "qwen2")
make_mistral = functools.partial(make_model, "mistral")
make_gpt2 = functools.partial(make_model, "gpt2")
make_gptj = functools.partial(make_model, "gptj")
make_gptneox = functools.partial(make_model, "gptneox")


def make_arch_model(arch: str, tok=None, seed: int = 0, **overrides) -> ArchModel:
    tok = make_tokenizer() if tok is None else tok
    model = make_model(arch, tok, seed=seed, **overrides)
    spec = ARCHS[arch]
    return ArchModel(arch, model, tok, spec.value_module, spec.key_module, _num_layers(model.config),
                     spec.layer_prefix)


# ----------------------------------------------------------------------------------------------------------
# The fact model: a tiny Llama trained on the synthetic facts
# ----------------------------------------------------------------------------------------------------------
FACT_MODEL_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)
FACT_MODEL_STEPS = 100
FACT_MODEL_LR = 5e-3
FACT_MODEL_WARMUP = 10


@dataclass
class FactModel:
    model: torch.nn.Module
    tok: transformers.PreTrainedTokenizerFast
    facts: list
    layer_prefix: str = "model.layers"
    value_module: str = "mlp.down_proj"
    key_module: str = "mlp.up_proj"
    train_seconds: float = 0.0
    final_loss: float = float("nan")

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers


def _train_fact_model(seed: int = 0):
    tok = make_tokenizer()
    model = make_model("llama", tok, seed=seed, **FACT_MODEL_CONFIG)
    texts = fact_sentences()
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    n = max(map(len, ids))
    input_ids = torch.full((len(ids), n), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(ids), n), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)

    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: these ops are far too small to gain from more, extra threads crawl on a busy machine, and
    # the trained weights then do not depend on the number of cores.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss = _fit(model, input_ids, attention, labels)
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    return model, tok, time.perf_counter() - start, loss


def _fit(model, input_ids, attention, labels) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=FACT_MODEL_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / FACT_MODEL_WARMUP) * max(0.05, 1 - s / FACT_MODEL_STEPS))
    loss = float("nan")
    for _ in range(FACT_MODEL_STEPS):
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        loss = out.loss.item()
    model.eval()
    return loss


@functools.lru_cache(maxsize=1)
def _trained_fact_model() -> FactModel:
    model, tok, seconds, loss = _train_fact_model()
    return FactModel(model, tok, copy.deepcopy(FACTS), train_seconds=seconds, final_loss=loss)


def get_fact_model() -> FactModel:
    """The shared trained fact model (trained at most once per process). Do not edit it: use
    `fact_model_copy()` for a private copy."""
    return _trained_fact_model()


def fact_model_copy() -> FactModel:
    """A deep copy of the trained fact model (model, tokenizer and facts) that may be edited freely."""
    base = _trained_fact_model()
    return FactModel(copy.deepcopy(base.model), make_tokenizer(), copy.deepcopy(base.facts),
                     train_seconds=base.train_seconds, final_loss=base.final_loss)


# ----------------------------------------------------------------------------------------------------------
# Helpers for checking answers
# ----------------------------------------------------------------------------------------------------------
def target_ids(tok, prompt: str, target: str) -> list[int]:
    """Token ids of `target` as they follow `prompt` in `f"{prompt} {target}"`."""
    n = len(tok(prompt)["input_ids"])
    return tok(f"{prompt} {target}")["input_ids"][n:]


@torch.no_grad()
def greedy_ids(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt` (token ids, without the prompt)."""
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def answers_correctly(model, tok, prompt: str, target: str) -> bool:
    """Whether greedy decoding of `prompt` starts with the tokens of `target`."""
    return fact_hits(model, tok, [{"prompt": prompt, "target": target}], target_key="target")[0]


@torch.no_grad()
def fact_hits(model, tok, facts, prompt_key: str = "prompt", target_key: str = "target_true") -> list[bool]:
    """For each fact, whether greedy decoding of `fact[prompt_key]` starts with the tokens of
    `fact[target_key]`.

    One batched teacher-forced forward pass: greedy decoding produces the target tokens exactly when, with
    the target fed in, the argmax at every target position is the next target token.
    """
    rows, spans = [], []
    for f in facts:
        prompt_ids = tok(f[prompt_key])["input_ids"]
        full = tok(f"{f[prompt_key]} {f[target_key]}")["input_ids"]
        rows.append(full)
        spans.append((len(prompt_ids), len(full)))
    if not rows:
        return []
    n = max(map(len, rows))
    pad = tok.pad_token_id
    input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    device = next(model.parameters()).device
    pred = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.argmax(-1).cpu()
    return [p[start - 1:end - 1].tolist() == row[start:end]
            for row, (start, end), p in zip(rows, spans, pred, strict=True)]


def failed_facts(model, tok, facts, prompt_key: str = "prompt", target_key: str = "target_true") -> list:
    """The facts whose greedy answer to `fact[prompt_key]` does not start with `fact[target_key]`, each with
    what greedy decoding gave instead (`"got"`)."""
    failed = []
    for f, hit in zip(facts, fact_hits(model, tok, facts, prompt_key, target_key), strict=True):
        if not hit:
            want = target_ids(tok, f[prompt_key], f[target_key])
            failed.append({**f, "got": tok.decode(greedy_ids(model, tok, f[prompt_key], len(want)))})
    return failed


# ----------------------------------------------------------------------------------------------------------
# Helpers shared by the edit tests
# ----------------------------------------------------------------------------------------------------------
def edit_requests(facts) -> list[dict]:
    """Counterfactual edit requests (EasyEdit dicts) for fact dicts."""
    return [{"prompt": f["prompt"], "target_new": f["target_new"], "ground_truth": f["target_true"]}
            for f in facts]


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def target_nll(model, tok, requests, max_length: int = 40) -> float:
    """Mean over requests of the target tokens' mean NLL (teacher forced)."""
    from easyedit_kne.tokens import encode_requests, target_logprobs

    batch = encode_requests(tok, requests, max_length)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp, mask = target_logprobs(logits, batch.labels)
    return float(-(logp.sum(1) / mask.sum(1)).mean())


@torch.no_grad()
def targets_are_argmax(model, tok, requests, max_length: int = 40) -> bool:
    """Every target token of every request is the model's argmax (teacher forced)."""
    from easyedit_kne.tokens import encode_requests

    batch = encode_requests(tok, requests, max_length)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    at = batch.labels[:, 1:] != -100
    return bool((logits[:, :-1].argmax(-1)[at] == batch.labels[:, 1:][at]).all())
