"""EasyEdit's edit-quality metrics, reimplemented to give the same numbers, plus greedy exact match.

What EasyEdit does (easyeditor/evaluate/evaluate.py, evaluate_utils.py, util/generate.py and
editors/editor.py; teacher-forcing evaluation, decoder-only model, `evaluation_type` not "LLM-judge"):

* rewrite / rephrase / portability accuracy (`test_prediction_acc`, teacher forced): the text
  `prompt + ' ' + target` is tokenized with LEFT padding (the tokenizer's side is forced to left for the
  call); one batched forward pass over all prompts of a call; the prompt length of row i is
  (#pad tokens in the row of prompt+target) + (#non-pad tokens of the prompt tokenized alone); the
  argmax at positions [len-1, T-1) is compared with the tokens at [len, T) and the share of equal
  positions is the accuracy. One value per prompt, in a list; rows with no target token give NaN and are
  dropped when there is more than one prompt.
* locality (`compute_locality_quality` + `finalize_locality_metrics`): the same forward pass with the
  locality answer as target, but the argmax tokens themselves are kept (`{key}_output`), before the edit
  ("pre") and after it ("post"); `{key}_acc` of the post metrics is, per locality prompt, the share of
  positions where the post-edit argmax token equals the pre-edit one (not the ground truth).
* fluency (`test_generation_quality`): `generate_fast` samples (top-k = 5, from the global torch RNG) from
  the edit prompt until the sequence, prompt included, is 100 tokens long; the decoded text (prompt
  included, special tokens skipped, NFKD-normalised, "\\n\\n" -> " ") is scored by
  `n_gram_entropy`: for n = 2 and 3 the entropy in bits of the n-gram frequency distribution of
  `nltk.word_tokenize` tokens, weighted 2/3 and 4/3, averaged.
* KnowEdit summary (examples/run_knowedit_llama2.py `eval`): Edit Succ = mean of rewrite_acc[0];
  Portability / Locality = mean over cases of the mean over the case's keys of the key's mean;
  Fluency = mean ngram_entropy; all x 100.

Oddities found in EasyEdit, and what is done here:

* `max_length` does not truncate anything in EasyEdit's teacher-forced path: the tokenizer's max_length
  is max(hparams.max_length, longest prompt+target + 1). Here, so that attribution, training and
  evaluation see the same tokens, a prompt whose `prompt + ' ' + target` exceeds `max_length` is cut from
  the left exactly as `easyedit_kne.tokens.encode_one` cuts it, with a warning (`truncate=False` gives
  EasyEdit's behaviour). Texts within `max_length` -- all of ZsRE, counterfact and recent at the default
  40 -- are untouched, so the numbers equal EasyEdit's there.
* The prompt length counts pad-token ids; with pad == eos (EasyEdit sets `pad_token_id = eos_token_id`
  for llama-named models) an eos/pad id inside the text is counted as padding. Mirrored.
* The teacher-forced pass is batched with left padding and no position_ids, so padded rows see shifted
  absolute positions (harmless with RoPE up to rounding). Mirrored: one batched pass per call.
* `generate_fast` samples, so fluency is random; EasyEdit seeds the global RNG once at import
  (`seed_everything(42)`). Pass a `torch.Generator` for reproducible numbers. A prompt of 100 tokens or
  more gets no generated token at all: its "fluency" is that of the prompt (long WikiBio passages). EasyEdit
  runs prompts through one batch; here each prompt is generated on its own, which is identical for the
  single prompt compute_edit_quality passes.
* The KnowEdit example's `eval` averages every key of post["locality"]; current EasyEdit keeps the
  `{key}_output` token lists there next to `{key}_acc`, which that code cannot average. `summarize` uses
  the `_acc` keys only (what older EasyEdit left there).
* A locality/portability key with an empty prompt list makes EasyEdit fail (`max()` of an empty
  sequence); such keys are skipped here (`load_knowedit` never produces them).
* nltk.word_tokenize needs NLTK's Punkt data (a download); `word_tokenize` below is a plain-Python
  reimplementation: the Penn-Treebank rules of nltk's NLTKWordTokenizer applied to sentences split the
  way Punkt's English model splits ordinary prose (after . ? ! followed by space, not after common
  abbreviations, single-letter initials or an ellipsis). Punkt's learned abbreviation and orthographic
  statistics are not reproduced, so rare abbreviations can split differently.

Extra metric: greedy exact match (`exact_match=True`): greedy decoding of as many tokens as the target has
after the prompt, compared with EasyEdit's `exact_match_score` normalisation (lower case, no punctuation,
no articles, single spaces).
"""

from __future__ import annotations

from .batched import fast_edit_quality  # noqa: F401
from .edit_quality import (  # noqa: F401
    compute_edit_quality,
)
from .fluency import (  # noqa: F401
    _clean_generated,
    _sample_top_k,
    generate_fast,
    test_generation_quality,
)
from .ngram import (  # noqa: F401
    _ends_sentence,
    _opens_sentence,
    compute_freq,
    compute_n_gram_entropy,
    n_gram_entropy,
    sent_tokenize,
    treebank_tokenize,
    word_tokenize,
)
from .summary import (  # noqa: F401
    TABLE_COLUMNS,
    _mean,
    _section_case_mean,
    summarize,
    table_numbers,
)
from .teacher_forced import (  # noqa: F401
    PORTABILITY_KNOWEDIT,
    _apply_chat_template,
    _as_list,
    _logits,
    _metric_meta_lm,
    _metric_meta_locality,
    compute_locality_quality,
    compute_portability_quality,
    compute_rewrite_or_rephrase_quality,
    encode_group,
    exact_match_score,
    finalize_locality_metrics,
    fit_prompts,
    greedy_exact_match,
    locality_accuracy,
    normalize_answer,
    perplexity,
    resolve_device,
    score_group,
    test_prediction_acc,
)
