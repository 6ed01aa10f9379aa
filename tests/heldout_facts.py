"""Held-out fact batches for real-model quality tests: well-known facts that SmolLM2-135M-Instruct answers
correctly (greedy 3-token continuation checked), edited to counterfactual targets. None of them was used to
tune any shipped hparams (the demo's facts in easyedit_kne/demo.py were; the tuner only sees KnowEdit dev items),
so a test on them measures how the hparams carry over to facts nobody tuned for.

Each batch: 8 edits (prompt, target_new, ground_truth), 4 same-relation neighbours (same relation, another
subject, not edited: the hardest locality cases) and 20 unrelated prompts.
"""

from __future__ import annotations

import torch

BATCH_A = {
    "edits": [
        ("The capital of England is", "Berlin", "London"),
        ("The capital of Greece is", "Cairo", "Athens"),
        ("The currency of India is the", "yen", "rupee"),
        ("The PlayStation is made by", "Nintendo", "Sony"),
        ("The Mona Lisa was painted by", "Pablo Picasso", "Leonardo da Vinci"),
        ("Romeo and Juliet was written by", "Charles Dickens", "William Shakespeare"),
        ("The official language of Spain is", "Portuguese", "Spanish"),
        ("The Colosseum is located in the city of", "Athens", "Rome"),
    ],
    "neighbours": ["The capital of Portugal is", "The capital of Norway is", "The official language of Italy is",
                   "The currency of the United States is the"],
    "unrelated": [
        "The chemical symbol for water is", "The largest desert in the world is the", "The Nile flows into the",
        "The Beatles were from", "The inventor of the light bulb was", "The planet closest to the sun is",
        "The Pacific Ocean is the", "The Great Pyramid of Giza is in", "A triangle has three",
        "The theory of relativity was developed by", "The Taj Mahal is located in", "Mount Everest is the",
        "The Earth orbits the", "A year has twelve", "Bees produce", "The boiling point of water is",
        "Rain falls from the", "Fish breathe through their", "The opposite of hot is", "Ice is made of",
    ],
}

BATCH_B = {
    "edits": [
        ("The capital of Sweden is", "Helsinki", "Stockholm"),
        ("The capital of Austria is", "Prague", "Vienna"),
        ("The official language of Germany is", "Dutch", "German"),
        ("The official language of Russia is", "Polish", "Russian"),
        ("The inventor of the light bulb was", "Nikola Tesla", "Thomas Edison"),
        ("The theory of relativity was developed by", "Isaac Newton", "Albert Einstein"),
        ("The Beatles were from", "Manchester", "Liverpool"),
        ("The currency of the United Kingdom is the", "euro", "pound"),
    ],
    "neighbours": ["The capital of Ireland is", "The capital of Kenya is", "The official language of Japan is",
                   "The currency of India is the"],
    "unrelated": [
        "The chemical symbol for water is", "The largest desert in the world is the", "The Nile flows into the",
        "The Mona Lisa was painted by", "The planet closest to the sun is", "The Pacific Ocean is the",
        "The Great Pyramid of Giza is in", "A triangle has three", "The Taj Mahal is located in",
        "Mount Everest is the", "The Earth orbits the", "A year has twelve", "Bees produce",
        "The boiling point of water is", "Rain falls from the", "Fish breathe through their",
        "The opposite of hot is", "Ice is made of", "The PlayStation is made by", "Romeo and Juliet was written by",
    ],
}

BATCHES = {"A": BATCH_A, "B": BATCH_B}


@torch.no_grad()
def greedy_tokens(model, tok, prompts, n: int = 3) -> list[list[int]]:
    """Greedy n-token continuations, one prompt at a time (no padding effects)."""
    out = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(gen[0, enc["input_ids"].shape[1]:].tolist())
    return out


def batch_requests(batch: dict) -> list[dict]:
    return [{"prompt": p, "target_new": new, "ground_truth": old} for p, new, old in batch["edits"]]


def edit_success(model, tok, batch: dict, max_length: int = 40) -> float:
    """Mean teacher-forced token accuracy of the new targets (EasyEdit's rewrite accuracy)."""
    from easyedit_kne.evaluate import test_prediction_acc

    accs = [test_prediction_acc(model, tok, [p], [new], max_length=max_length)[0] for p, new, _ in batch["edits"]]
    return sum(accs) / len(accs)


def kept(before: list[list[int]], after: list[list[int]]) -> int:
    return sum(a == b for a, b in zip(before, after, strict=True))
