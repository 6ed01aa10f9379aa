"""The boundary between prompt and target: tokenizers that append EOS, prompts ending in a space, and
SentencePiece pieces that span the space between prompt and target."""

import pytest
import tiny_models as tm
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from easyedit_kne import KNEHyperParams, apply_kne_to_model
from easyedit_kne.tokens import encode_one, encode_requests


def _with_eos(tok_bos_only):
    tk = Tokenizer.from_str(tm._tokenizer_json())
    tk.post_processor = processors.TemplateProcessing(
        single=f"{tm.BOS} $A {tm.EOS}", special_tokens=[(tm.BOS, tok_bos_only.bos_token_id),
                                                         (tm.EOS, tok_bos_only.eos_token_id)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=tm.BOS, eos_token=tm.EOS,
                                                pad_token=tm.PAD, unk_token=tm.UNK)


def _sentencepiece(split: bool):
    """A Unigram model with Metaspace pre-tokenization (as SentencePiece); its piece "s▁D" spans a space."""
    pieces = ["<unk>", "<s>", "</s>", "▁Kiva", "▁speaks", "▁Dutch", "▁speak", "s▁D", "utch", "▁", "▁▁", "Dutch"]
    pieces += [c for c in "abcdefghijklmnopqrstuvwxyzKDS"]
    scores = {"s▁D": -0.1, "▁speak": -0.1, "utch": -0.1, "▁speaks": -5.0, "▁Dutch": -0.2, "▁▁": -0.1,
              "Dutch": -0.5}
    model = models.Unigram([(p, scores.get(p, -1.0 if p.startswith("▁") else -8.0)) for p in pieces], unk_id=0)
    tk = Tokenizer(model)
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=split)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<unk>")


def test_appended_eos_is_dropped_and_targets_match(tiny_tok):
    eos_tok = _with_eos(tiny_tok)
    prompt, target = "The capital of Velaria is", "Morn Tarsk"
    assert eos_tok(prompt)["input_ids"][-1] == eos_tok.eos_token_id  # the tokenizer does append EOS
    plain = encode_one(tiny_tok, prompt, target, 40)
    with_eos = encode_one(eos_tok, prompt, target, 40)
    assert with_eos.ids == plain.ids and with_eos.n_prompt == plain.n_prompt
    assert with_eos.ids[with_eos.n_prompt:] == tm.target_ids(tiny_tok, prompt, target)


def test_appended_eos_edit_runs(fact_model_copy):
    fm = fact_model_copy
    eos_tok = _with_eos(fm.tok)
    hp = KNEHyperParams(model_name="x", ig_steps=4, p=5.0, num_steps=40, lr=0.02, t_loss=0.2)
    apply_kne_to_model(fm.model, eos_tok, tm.edit_requests(fm.facts[:1]), hp)
    assert tm.fact_hits(fm.model, fm.tok, fm.facts[:1], target_key="target_new") == [True]


def test_prompt_ending_in_a_space(tiny_tok):
    """Byte-level BPE keeps the prompt's tokens as a prefix; a SentencePiece model that does not gets a
    clear error naming the fix."""
    e = encode_one(tiny_tok, "Kiva speaks ", "Dutch", 40)
    assert e.ids[:e.n_prompt] == tiny_tok("Kiva speaks ")["input_ids"]
    sp = _sentencepiece(split=True)  # spaces split pieces: "▁" then "▁Dutch"
    e = encode_one(sp, "Kiva speaks ", "Dutch", 40)
    assert sp.convert_ids_to_tokens(e.ids[e.n_prompt:]) == ["▁Dutch"]
    sp = _sentencepiece(split=False)  # "▁▁" is one piece: the prompt's last token "▁" is gone
    assert "▁▁" in sp.convert_ids_to_tokens(sp("Kiva speaks  Dutch")["input_ids"])
    requests = [{"prompt": "Kiva", "target_new": "Dutch"}, {"prompt": "Kiva speaks ", "target_new": "Dutch"}]
    with pytest.raises(ValueError, match="request 1: .*remove the trailing whitespace"):
        encode_requests(sp, requests, 40)


def test_sentencepiece_piece_across_the_boundary_is_a_clear_error():
    sp = _sentencepiece(split=False)
    prompt_tokens = sp.convert_ids_to_tokens(sp("Kiva speaks")["input_ids"])
    full_tokens = sp.convert_ids_to_tokens(sp("Kiva speaks Dutch")["input_ids"])
    assert "▁speaks" in prompt_tokens and "s▁D" in full_tokens  # the piece does span the boundary
    requests = [{"prompt": "Kiva", "target_new": "speaks"}, {"prompt": "Kiva speaks", "target_new": "Dutch"}]
    with pytest.raises(ValueError, match=r"request 1: the prompt's tokens are not a prefix.*word boundary"):
        encode_requests(sp, requests, 40)
    # split on spaces (SentencePiece's usual setting), the same request encodes
    e = encode_one(_sentencepiece(split=True), "Kiva speaks", "Dutch", 40)
    assert _sentencepiece(split=True).convert_ids_to_tokens(e.ids[e.n_prompt:]) == ["▁Dutch"]


def test_boundary_error_leaves_the_model_unchanged(tiny_llama):
    original = tm.state_of(tiny_llama)
    sp = _sentencepiece(split=False)
    with pytest.raises(ValueError, match="request 0"):
        apply_kne_to_model(tiny_llama, sp, [{"prompt": "Kiva speaks", "target_new": "Dutch"}],
                           KNEHyperParams(model_name="x"))
    assert tm.same_state(tiny_llama, original) and torch.is_tensor(next(iter(original.values())))
