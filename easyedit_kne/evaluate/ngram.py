"""The n-gram entropy of generated text (EasyEdit's fluency number) and the plain-Python word tokenizer it
uses in place of nltk.word_tokenize (no Punkt download)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import numpy as np

# ----------------------------------------------------------- word tokenizer (nltk.word_tokenize)
# Common English abbreviations (lower case, without the final period): after them a period ends a
# sentence only when a usual sentence opener follows (Punkt's abbreviation + orthographic heuristics).
_ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof sr jr st ft gen col lt maj adm sen rep reps inc ltd corp co cos bros vs
jan feb aug sep sept oct nov dec tues wed fri ave a.m p.m u.s u.k u.n u.s.a ph.d d.c n.y calif fla
""".split())
# Capitalised words that open sentences (after an abbreviation, an initial or an ellipsis they mark a
# sentence start; elsewhere Punkt learns this from its training corpus).
_SENTENCE_OPENERS = frozenset("""
the a an he she it i we they you this that these those there his her its their our my in on at for
but and however if when while after as although since so some many most both according even yet thus
which who whom whose how where why then now one not no all each every other such with from by to
of before during because""".split())
# Single letters that Punkt's English model treats as abbreviations; other initials end a sentence
# unless a word follows.
_ABBREVIATION_LETTERS = frozenset("cdefghklmnprstvw")
_OPENING_PUNCT = "([{\"'`\u00ab\u201c\u2018"
_CLOSING_PUNCT = ")]}\"'\u00bb\u201d\u2019"
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")


# --- Penn Treebank rules, in the order NLTKWordTokenizer applies them ---
_QUOTE_OPEN_CHARS = "\u00ab\u201c\u2018\u201e"
_QUOTE_CLOSE_CHARS = "\u00bb\u201d\u2019"
_STARTING = [
    (re.compile(f"([{_QUOTE_OPEN_CHARS}]|`+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
]
_PUNCT = [
    (re.compile(f"([^.])(\\.)([\\])}}>\"'{_QUOTE_CLOSE_CHARS} ]*)\\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\])}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"\*"), r" \g<0> "),
]
_BRACKETS = (re.compile(r"[\][(){}<>]"), r" \g<0> ")
_DASHES = (re.compile(r"--"), r" -- ")
_ENDING = [
    (re.compile(f"([{_QUOTE_CLOSE_CHARS}])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b")]


def treebank_tokenize(sentence: str) -> list[str]:
    """Word tokens of one sentence by the Penn-Treebank rules of nltk's NLTKWordTokenizer."""
    text = sentence
    for pattern, repl in _STARTING + _PUNCT:
        text = pattern.sub(repl, text)
    for pattern, repl in (_BRACKETS, _DASHES):
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _ENDING:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


_PUNKT_WORD = re.compile(r"[^)\";}\]*:@'({\[!?,]+")


def _opens_sentence(word: str) -> bool:
    """A capitalised usual opener ("The", "They'll"); Punkt's next token stops at punctuation."""
    m = _PUNKT_WORD.match(word)
    head = m.group(0).rstrip(".") if m else ""
    return head[:1].isupper() and head.lower() in _SENTENCE_OPENERS


def _ends_sentence(word: str, next_word: str) -> bool:
    """Punkt's decision for the whitespace-delimited `word` followed by `next_word` (approximated)."""
    core = word.rstrip(_CLOSING_PUNCT)
    if core.endswith(("?", "!")):
        return True
    if not core.endswith("."):
        return False
    bare = core.lstrip(_OPENING_PUNCT)
    kind = bare[:-1].lower()
    if (bare.endswith("..") or kind in _ABBREVIATIONS or kind.split("-")[-1] in _ABBREVIATIONS
            or kind in _ABBREVIATION_LETTERS):  # ellipsis or abbreviation
        return _opens_sentence(next_word)
    if len(kind) == 1 and kind.isalpha():  # another initial: a following word keeps the sentence
        return not next_word[:1].isalpha() or _opens_sentence(next_word)
    if _NUMBER.match(bare):  # a number or ordinal: a sentence goes on in lower case
        return not next_word[:1].islower()
    return True


def sent_tokenize(text: str) -> list[str]:
    """Sentences split the way Punkt's English model splits ordinary prose (see the module docstring)."""
    words = list(re.finditer(r"\S+", text))
    sentences, start = [], 0
    for cur, nxt in zip(words, words[1:], strict=False):
        if _ends_sentence(cur.group(0), nxt.group(0)):
            sentences.append(text[start:cur.end()].strip())
            start = nxt.start()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return [s for s in sentences if s]


def word_tokenize(text: str) -> list[str]:
    """Plain-Python stand-in for nltk.word_tokenize (English): sentence split, then Treebank rules."""
    return [tok for sent in sent_tokenize(text) for tok in treebank_tokenize(sent)]


def compute_freq(sentence: str, n: int = 2) -> Counter:
    tokens = word_tokenize(sentence)
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def compute_n_gram_entropy(sentence: str, ns=None, weights=None, agg: str = "arith") -> float:
    ns = [2, 3] if ns is None else ns
    weights = [2 / 3, 4 / 3] if weights is None else weights
    if agg not in ("arith", "geom"):
        raise ValueError(f"agg={agg!r}: choose 'arith' or 'geom'")
    entropies = []
    for n in ns:
        freqs = np.array(list(compute_freq(sentence, n).values()), dtype=np.float64)
        if freqs.size == 0:
            entropies.append(0.0)  # EasyEdit: an empty distribution sums to 0
            continue
        freqs = freqs / freqs.sum()
        entropies.append(np.sum(-freqs * np.log(freqs) / np.log(2)))
    weighted = np.array(entropies) * np.array(weights)
    if agg == "geom":
        return float(np.exp(np.mean(np.log(weighted))))
    return float(np.mean(weighted))


def n_gram_entropy(gen_texts: Iterable[str], agg: str = "arith") -> float:
    values = [compute_n_gram_entropy(t) for t in gen_texts]
    if agg == "geom":
        return float(np.exp(np.mean(np.log(values))))
    return float(np.mean(values))

