"""EasyEdit's metrics (easyedit_kne.evaluate), checked against values computed by hand.

Most tests use `BigramLM`, a model whose argmax we choose: at every position it puts (almost) all the
probability on `table[token]` (the token itself when the table has no entry), whatever came before.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_models as tm
import torch

from easyedit_kne import evaluate as ev


class BigramLM(torch.nn.Module):
    def __init__(self, vocab_size: int, table: dict, high: float = 10.0, low: float = -1e4):
        super().__init__()
        self.high, self.low = high, low
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.vocab_size = vocab_size
        self.table = dict(table)
        self.inputs = []

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None, **kwargs):
        self.inputs.append(input_ids.clone())
        nxt = torch.tensor([[self.table.get(t, t) for t in row] for row in input_ids.tolist()],
                           dtype=torch.long).reshape(input_ids.shape)
        logits = torch.full((*input_ids.shape, self.vocab_size), self.low)
        logits.scatter_(-1, nxt.unsqueeze(-1), self.high)
        return SimpleNamespace(logits=logits + self.anchor, past_key_values=None)


@pytest.fixture
def tok():
    return tm.make_tokenizer()  # BOS-prefixed, pad != eos, right padding by default


def w(tok, word: str) -> int:
    """The id of the single token " word"."""
    ids = tok(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (word, ids)
    return ids[0]


def bigram(tok, pairs, **kwargs):
    return BigramLM(len(tok), {w(tok, a): w(tok, b) for a, b in pairs}, **kwargs)


# ------------------------------------------------------------------------ teacher-forced accuracy
def test_single_prompt_accuracy(tok):
    prompt = "The capital of Velaria is"
    assert ev.test_prediction_acc(bigram(tok, [("is", "Morn")]), tok, prompt, "Morn") == [1.0]
    assert ev.test_prediction_acc(bigram(tok, [("is", "Tarsk")]), tok, prompt, "Morn") == [0.0]
    # three target tokens, the last one wrong: 2/3
    model = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("Olga", "cat")])
    assert ev.test_prediction_acc(model, tok, prompt, "Maria Olga Peter") == [pytest.approx(2 / 3)]


def test_batch_is_left_padded_and_per_prompt(tok):
    model = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("Olga", "cat"), ("speaks", "Dutch")])
    prompts = ["The capital of Velaria is", "Kiva speaks"]
    targets = ["Maria Olga Peter", "Dutch"]
    assert tok.padding_side == "right"
    accs = ev.test_prediction_acc(model, tok, prompts, targets)
    assert accs == [pytest.approx(2 / 3), 1.0]
    assert tok.padding_side == "right"  # restored
    batch = model.inputs[-1]
    assert batch.shape[0] == 2
    assert batch[1, 0].item() == tok.pad_token_id  # left padding, as EasyEdit forces
    assert batch[0, 0].item() == tok.bos_token_id
    tokens = ev.test_prediction_acc(model, tok, prompts, targets, locality=True)
    assert tokens == [[w(tok, "Maria"), w(tok, "Olga"), w(tok, "cat")], [w(tok, "Dutch")]]
    # EasyEdit's max_length never truncates (it uses max(max_length, longest + 1)): truncate=False
    assert ev.test_prediction_acc(model, tok, prompts, targets, max_length=2, truncate=False) == accs


def test_pad_equal_to_eos_like_easyedit_llama_branch(tok):
    tok.pad_token = tok.eos_token  # BaseEditor: tok.pad_token_id = tok.eos_token_id
    model = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("speaks", "Dutch")])
    accs = ev.test_prediction_acc(model, tok, ["The capital of Velaria is", "Kiva speaks"],
                                  ["Maria Olga Peter", "French"])
    assert accs == [pytest.approx(2 / 3), 0.0]


def test_chat_template_only_for_accuracy_not_locality(tok):
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} is{% endfor %}"
    model = bigram(tok, [("is", "Dutch")])
    assert ev.test_prediction_acc(model, tok, "Kiva speaks", "Dutch", use_chat_template=True) == [1.0]
    assert ev.test_prediction_acc(model, tok, "Kiva speaks", "Dutch") == [0.0]
    # locality never uses the template: " speaks" predicts itself
    assert ev.test_prediction_acc(model, tok, "Kiva speaks", "Dutch", locality=True,
                                  use_chat_template=True) == [[w(tok, "speaks")]]


def test_prediction_errors(tok):
    model = bigram(tok, [])
    with pytest.raises(ValueError, match="no prompts"):
        ev.test_prediction_acc(model, tok, [], [])
    with pytest.raises(ValueError, match="targets"):
        ev.test_prediction_acc(model, tok, ["a", "b"], ["a"])


def test_real_llama_batching_matches_single_prompts(fact_model):
    model, tok = fact_model.model, tm.make_tokenizer()
    tok.padding_side = "left"
    facts = fact_model.facts[::5]
    prompts = [f["prompt"] for f in facts]
    truths = [f["target_true"] for f in facts]
    assert ev.test_prediction_acc(model, tok, prompts, truths) == [1.0] * len(facts)
    batched = ev.test_prediction_acc(model, tok, prompts, [f["target_new"] for f in facts], locality=True)
    single = [ev.test_prediction_acc(model, tok, p, f["target_new"], locality=True)[0]
              for p, f in zip(prompts, facts, strict=True)]
    assert batched == single


def test_perplexity_by_hand(tok):
    pairs = [("is", "Maria"), ("Maria", "Olga"), ("Olga", "cat")]
    model = bigram(tok, pairs, high=2.0, low=0.0)
    log_z = math.log(math.exp(2.0) + len(tok) - 1)
    nll_right, nll_wrong = log_z - 2.0, log_z
    want = math.exp((2 * nll_right + nll_wrong) / 3)
    got = ev.perplexity(model, tok, "The capital of Velaria is", "Maria Olga Peter")
    assert got == pytest.approx(want, rel=1e-5)
    model_ok = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("Olga", "Peter")])
    assert ev.perplexity(model_ok, tok, "The capital of Velaria is", "Maria Olga Peter") == pytest.approx(1.0)
    ret = ev.compute_rewrite_or_rephrase_quality(model_ok, tok, "The capital of Velaria is", "Maria Olga Peter",
                                                 eval_metric="ppl")
    assert ret["rewrite_ppl"] == pytest.approx(1.0)
    assert ret["metric_meta"]["rewrite"]["protocol"] == "teacher_forcing_ppl"


# ------------------------------------------------------------------------------ edit quality
REQUEST = {
    "prompt": "The capital of Velaria is",
    "target_new": "Maria Olga Peter",
    "ground_truth": "Morn",
    "subject": "Velaria",
    "rephrase_prompt": "Velaria has its capital in",
    "locality": {"Relation_Specificity": {"prompt": ["Kiva speaks", "The CEO of Zentor is"],
                                          "ground_truth": ["Dutch", "Alice"]}},
    "portability": {"reasoning": {"prompt": ["Kiva speaks"], "ground_truth": ["Dutch"]},
                    "Subject_Aliasing": {"prompt": [], "ground_truth": []}},
}


def test_compute_edit_quality_pre_post_and_summary(tok):
    pre_model = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("Olga", "cat"), ("speaks", "Dutch")])
    post_model = bigram(tok, [("is", "Maria"), ("Maria", "Olga"), ("Olga", "Peter"), ("in", "Maria"),
                              ("speaks", "French")])
    pre = ev.compute_edit_quality(pre_model, tok, REQUEST)
    assert pre["rewrite_acc"] == [pytest.approx(2 / 3)]
    # " in" -> " in" (wrong), " Maria" -> " Olga" (right), " Olga" -> " cat" (wrong)
    assert pre["rephrase_acc"] == [pytest.approx(1 / 3)]
    assert pre["locality"] == {"Relation_Specificity_output": [[w(tok, "Dutch")], [w(tok, "Maria")]]}
    assert pre["portability"] == {"reasoning_acc": [1.0]}  # the empty key is skipped
    assert set(pre["metric_meta"]) == {"rewrite", "rephrase"}
    assert pre["metric_meta"]["rewrite"]["protocol"] == "decoder_only_teacher_forcing"
    assert "fluency" not in pre and "exact_match" not in pre

    post = ev.compute_edit_quality(post_model, tok, REQUEST)
    assert post["rewrite_acc"] == [1.0]
    assert post["rephrase_acc"] == [1.0]
    assert post["portability"] == {"reasoning_acc": [0.0]}
    case = ev.finalize_locality_metrics({"pre": pre, "post": post}, REQUEST)
    # " speaks": Dutch before, French after; " is": Maria both times
    assert case["post"]["locality"]["Relation_Specificity_acc"] == [0.0, 1.0]
    assert case["post"]["metric_meta"]["locality.Relation_Specificity"]["scorer"] == "token_match"

    summary = ev.summarize([case])
    assert summary["num_cases"] == 1
    assert summary["Edit_Succ"] == pytest.approx(100.0)
    assert summary["Rephrase"] == pytest.approx(100.0)
    assert summary["Portability"] == pytest.approx(0.0)
    assert summary["Locality"] == pytest.approx(50.0)
    assert summary["Fluency"] is None
    pre_summary = ev.summarize([case], phase="pre")
    assert pre_summary["Edit_Succ"] == pytest.approx(200 / 3)
    assert pre_summary["Portability"] == pytest.approx(100.0)
    assert pre_summary["Locality"] is None  # pre metrics hold outputs, not accuracies


def test_finalize_without_request_and_errors():
    case = {"pre": {"locality": {"A_output": [[1, 2], [3]]}}, "post": {"locality": {"A_output": [[1, 5], [3]]}}}
    ev.finalize_locality_metrics(case)
    assert case["post"]["locality"]["A_acc"] == [0.5, 1.0]
    assert ev.locality_accuracy([[1, 2, 3]], [[1, 2, 4]]) == [pytest.approx(2 / 3)]
    with pytest.raises(ValueError):
        ev.locality_accuracy([[1]], [[1], [2]])
    with pytest.raises(ValueError):
        ev.locality_accuracy([[1, 2]], [[1]])


def test_summarize_by_hand():
    metrics = [
        {"pre": {}, "post": {
            "rewrite_acc": [1.0],
            "portability": {"a_acc": [1.0, 0.0], "b_acc": [1.0]},
            "locality": {"RS_output": [[4], [5, 6]], "RS_acc": [1.0, 0.5], "F_acc": [0.0]},
            "fluency": {"ngram_entropy": 5.0},
            "exact_match": {"rewrite": [1.0], "portability": {"a": [1.0, 0.0], "b": [0.0]}},
        }},
        {"pre": {}, "post": {
            "rewrite_acc": [0.5],
            "portability": {},
            "locality": {"RS_acc": [1.0]},
            "fluency": {"ngram_entropy": 6.0},
            "exact_match": {"rewrite": [0.0], "portability": {}},
        }},
    ]
    s = ev.summarize(metrics)
    assert s["num_cases"] == 2
    assert s["Edit_Succ"] == pytest.approx(75.0)
    assert s["Portability"] == pytest.approx(75.0)  # case 1 only: mean(50, 100)
    assert s["Locality"] == pytest.approx(68.75)  # mean(mean(75, 0), 100)
    assert s["Fluency"] == pytest.approx(550.0)
    assert s["Portability_by_key"] == {"a": pytest.approx(50.0), "b": pytest.approx(100.0)}
    assert s["Locality_by_key"] == {"RS": pytest.approx(87.5), "F": pytest.approx(0.0)}
    assert s["Rephrase"] is None
    assert s["Exact_Match"] == pytest.approx(50.0)
    assert s["Exact_Match_Portability"] == pytest.approx(25.0)  # case 1: mean(50, 0)
    # bare post dicts are accepted too
    assert ev.summarize([m["post"] for m in metrics])["Edit_Succ"] == pytest.approx(75.0)
    with pytest.raises(ValueError):
        ev.summarize([])


# --------------------------------------------------------------------------------- exact match
def test_normalize_and_exact_match_score():
    assert ev.normalize_answer("  The Paris!  ") == "paris"
    assert ev.normalize_answer("An apple, a day") == "apple day"
    assert ev.exact_match_score(" paris.", "Paris")
    assert not ev.exact_match_score("Paris France", "Paris")


def test_greedy_exact_match_on_fact_model(fact_model):
    model, tok = fact_model.model, tm.make_tokenizer()
    facts = fact_model.facts[:6]
    prompts = [f["prompt"] for f in facts]
    assert ev.greedy_exact_match(model, tok, prompts, [f["target_true"] for f in facts]) == [1.0] * 6
    assert ev.greedy_exact_match(model, tok, prompts, [f["target_new"] for f in facts]) == [0.0] * 6
    request = {"prompt": facts[0]["prompt"], "target_new": facts[0]["target_true"],
               "rephrase_prompt": facts[0]["rephrase_prompt"],
               "portability": {"reasoning": {"prompt": [facts[1]["prompt"]], "ground_truth": ["nothing"]}}}
    ret = ev.compute_edit_quality(model, tok, request, exact_match=True)
    assert ret["exact_match"] == {"rewrite": [1.0], "rephrase": [1.0], "portability": {"reasoning": [0.0]}}
    assert ret["rewrite_acc"] == [1.0]


# ------------------------------------------------------------------------------------- fluency
def ngram_entropy_by_hand(counts2, counts3):
    def h(counts):
        total = sum(counts)
        return -sum(c / total * math.log2(c / total) for c in counts)
    return (2 / 3 * h(counts2) + 4 / 3 * h(counts3)) / 2


def test_generate_fast_and_fluency_by_hand(tok):
    model = bigram(tok, [("is", "Morn"), ("Morn", "is")])
    prompt = "The capital of Velaria is"  # <s> The capital of Velaria is: 6 tokens
    [text] = ev.generate_fast(model, tok, [prompt], max_out_len=12)
    assert text == "The capital of Velaria is Morn is Morn is Morn is"
    # after the prompt, one new token per forward pass (the cache carries the rest)
    assert [x.shape[1] for x in model.inputs] == [6, 1, 1, 1, 1, 1]
    # words: The capital of Velaria is Morn is Morn is Morn is
    # 2-grams: 4 distinct once, (is, Morn) x3, (Morn, is) x3; 3-grams: 4 once, (is Morn is) x3, (Morn is Morn) x2
    want = ngram_entropy_by_hand([1, 1, 1, 1, 3, 3], [1, 1, 1, 1, 3, 2])
    assert ev.compute_n_gram_entropy(text) == pytest.approx(want)
    ret = ev.compute_edit_quality(model, tok, {"prompt": prompt, "target_new": "Morn"}, test_generation=True,
                                  fluency_max_len=12)
    assert ret["fluency"] == {"ngram_entropy": pytest.approx(want)}
    # a prompt at least max_out_len tokens long gets no new token (EasyEdit's loop condition)
    assert ev.generate_fast(model, tok, [prompt], max_out_len=4) == [prompt]


def test_generate_fast_samples_top_k_reproducibly(fact_model):
    model, tok = fact_model.model, tm.make_tokenizer()
    prompt = fact_model.facts[0]["prompt"]
    calls = []
    handle = model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                         with_kwargs=True)
    try:
        a = ev.generate_fast(model, tok, [prompt], max_out_len=20, generator=torch.Generator().manual_seed(1))
    finally:
        handle.remove()
    b = ev.generate_fast(model, tok, [prompt], max_out_len=20, generator=torch.Generator().manual_seed(1))
    assert a == b and a[0].startswith(prompt)
    n_prompt = len(tok(prompt)["input_ids"])
    assert calls == [(1, n_prompt)] + [(1, 1)] * (20 - n_prompt - 1)  # 20 tokens in all, prompt included
    # top-k: with k=1 sampling is greedy
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0, 2.0, -1.0]])
    picks = {ev._sample_top_k(logits, 3, torch.Generator().manual_seed(s)).item() for s in range(60)}
    assert picks == {1, 3, 4}
    assert ev._sample_top_k(logits, 1, None).item() == 1


def test_generate_fast_passes_the_cache_under_the_name_the_model_takes(tok, fact_model):
    """transformers 5.2x renamed the KV-cache keyword to `cache` (`past_key_values` warns, and goes in 5.40): a
    model whose forward takes `cache` gets it under that name, an older-style forward gets `past_key_values`."""
    import inspect

    model = fact_model.model
    seen = []
    handle = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    try:
        ev.generate_fast(model, tok, ["a b c"], max_out_len=8, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert seen and all(name in kw for kw in seen)
    if name == "cache":
        assert not any("past_key_values" in kw for kw in seen)
    old_style = bigram(tok, [("is", "Morn")])  # forward(input_ids, ..., past_key_values=None, use_cache=None)
    calls = []
    forward = old_style.forward
    old_style.forward = lambda *a, **kw: calls.append(set(kw)) or forward(*a, **kw)
    old_style.forward.__signature__ = inspect.signature(forward)
    ev.generate_fast(old_style, tok, ["The capital of Velaria is"], max_out_len=9)
    assert calls and all("past_key_values" in kw and "cache" not in kw for kw in calls)


def test_ngram_entropy_edge_cases():
    assert ev.compute_n_gram_entropy("") == 0.0
    assert ev.compute_n_gram_entropy("word") == 0.0
    # "a b a b": 2-grams (a b) x2, (b a); 3-grams (a b a), (b a b)
    assert ev.compute_n_gram_entropy("a b a b") == pytest.approx(ngram_entropy_by_hand([2, 1], [1, 1]))
    texts = ["a b a b", "x y z"]
    assert ev.n_gram_entropy(texts) == pytest.approx(
        np.mean([ngram_entropy_by_hand([2, 1], [1, 1]), ngram_entropy_by_hand([1, 1], [1])]))
    with pytest.raises(ValueError):
        ev.compute_n_gram_entropy("a b", agg="median")


# Expected tokens: nltk 3.6.5's word_tokenize (EasyEdit's pin) with the English Punkt model.
NLTK_CASES = [
    ('Hello, world! It\'s John\'s car. He said "no" and left.',
     ['Hello', ',', 'world', '!', 'It', "'s", 'John', "'s", 'car', '.', 'He', 'said', '``', 'no', "''", 'and',
      'left', '.']),
    ("Dr. Smith (the CEO) can't come; she's in the U.S. They'll meet at 12:30, won't they?",
     ['Dr.', 'Smith', '(', 'the', 'CEO', ')', 'ca', "n't", 'come', ';', 'she', "'s", 'in', 'the', 'U.S', '.',
      'They', "'ll", 'meet', 'at', '12:30', ',', 'wo', "n't", 'they', '?']),
    ("The capital of France is Paris. Paris is a city of 2,000,000 people... The end",
     ['The', 'capital', 'of', 'France', 'is', 'Paris', '.', 'Paris', 'is', 'a', 'city', 'of', '2,000,000',
      'people', '...', 'The', 'end']),
    ("Lucy Akhurst (b. 18 November 1975 in London) is an English actress.",
     ['Lucy', 'Akhurst', '(', 'b', '.', '18', 'November', '1975', 'in', 'London', ')', 'is', 'an', 'English',
      'actress', '.']),
    ("I cannot say \u201cyes\u201d -- gonna try it 'tis fine!? Sure.",
     ['I', 'can', 'not', 'say', '\u201c', 'yes', '\u201d', '--', 'gon', 'na', 'try', 'it', "'t", 'is', 'fine', '!',
      '?', 'Sure', '.']),
    ("Rick Mahler was drafted in 1975. the draft was long.",
     ['Rick', 'Mahler', 'was', 'drafted', 'in', '1975.', 'the', 'draft', 'was', 'long', '.']),
    ("Prices rose 5% & fell #3 @home*. Done.",
     ['Prices', 'rose', '5', '%', '&', 'fell', '#', '3', '@', 'home', '*', '.', 'Done', '.']),
]


@pytest.mark.parametrize("text,tokens", NLTK_CASES)
def test_word_tokenize_matches_nltk(text, tokens):
    assert ev.word_tokenize(text) == tokens


def test_resolve_device(tok):
    model = bigram(tok, [])
    assert ev.resolve_device(model) == torch.device("cpu")
    assert ev.resolve_device(model, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert ev.resolve_device(model, 0) == torch.device("cpu")


# ------------------------------------------------------------------------------- real SmolLM2
@pytest.mark.slow
def test_smollm2_metrics():
    from easyedit_kne.models import find_shared_gguf, load_model, smollm2_hf_dir

    if find_shared_gguf() is None:
        pytest.skip("shared/models/SmolLM2-135M-Instruct-Q4_1-gguf is absent (set EASYEDIT_KNE_SHARED)")
    model, tok = load_model(smollm2_hf_dir())
    assert ev.test_prediction_acc(model, tok, ["The capital of France is", "The capital of Germany is"],
                                  ["Paris", "Paris"]) == [1.0, 0.0]
    request = {"prompt": "The capital of France is", "target_new": "Rome", "subject": "France",
               "locality": {"Relation_Specificity": {"prompt": ["The capital of Japan is"],
                                                     "ground_truth": ["Tokyo"]}},
               "portability": {"reasoning": {"prompt": ["The Eiffel Tower is located in the city of"],
                                             "ground_truth": ["Paris"]}}}
    ret = ev.compute_edit_quality(model, tok, request, test_generation=True, exact_match=True,
                                  generator=torch.Generator().manual_seed(0))
    assert ret["rewrite_acc"] == [0.0]
    assert ret["portability"] == {"reasoning_acc": [1.0]}
    tokyo = tok(" Tokyo", add_special_tokens=False)["input_ids"]
    assert ret["locality"] == {"Relation_Specificity_output": [tokyo]}
    assert ret["exact_match"]["portability"] == {"reasoning": [1.0]}
    assert 1.0 < ret["fluency"]["ngram_entropy"] < 8.0


def test_over_long_prompts_are_cut_like_training(fact_model):
    """Evaluation sees the tokens attribution and training see: the prompt cut from the left, warned."""
    import warnings as _warnings

    from easyedit_kne.evaluate import test_prediction_acc as acc
    from easyedit_kne.tokens import encode_one

    model, tok = fact_model.model, fact_model.tok
    fact = fact_model.facts[0]
    long_prompt = " ".join([fact_model.facts[1]["prompt"] + " " + fact_model.facts[1]["target_true"] + "."] * 4
                           + [fact["prompt"]])
    with pytest.warns(UserWarning, match="exceed max_length=12"):
        enc = encode_one(tok, long_prompt, fact["target_true"], 12)
    cut = tok.decode(enc.ids[:enc.n_prompt], skip_special_tokens=True)
    assert tok(cut)["input_ids"] == enc.ids[:enc.n_prompt]
    with pytest.warns(UserWarning, match="exceed max_length=12"):
        got = acc(model, tok, long_prompt, fact["target_true"], max_length=12)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        assert got == acc(model, tok, cut, fact["target_true"], max_length=12)
    whole = acc(model, tok, long_prompt, fact["target_true"], max_length=12, truncate=False)
    assert len(whole) == 1
