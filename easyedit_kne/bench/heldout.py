"""Held-out fact batches for real-model quality checks (tests/test_*_smollm2.py and
`python -m easyedit_kne.bench.heldout`): well-known facts that SmolLM2-135M-Instruct answers
correctly (greedy 3-token continuation checked), edited to counterfactual targets. None of them was used to
tune any shipped hparams (the demo's facts in easyedit_kne/demo.py were; the tuner only sees KnowEdit dev items),
so a test on them measures how the hparams carry over to facts nobody tuned for.

Each batch: 8 edits (prompt, target_new, ground_truth, subject: as a user passes `subject=` to EasyEdit),
4 same-relation neighbours (same relation, another subject, not edited: the hardest locality cases) and 20
unrelated prompts.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import yaml

BATCH_A = {
    "edits": [
        ("The capital of England is", "Berlin", "London", "England"),
        ("The capital of Greece is", "Cairo", "Athens", "Greece"),
        ("The currency of India is the", "yen", "rupee", "India"),
        ("The PlayStation is made by", "Nintendo", "Sony", "PlayStation"),
        ("The Mona Lisa was painted by", "Pablo Picasso", "Leonardo da Vinci", "Mona Lisa"),
        ("Romeo and Juliet was written by", "Charles Dickens", "William Shakespeare", "Romeo and Juliet"),
        ("The official language of Spain is", "Portuguese", "Spanish", "Spain"),
        ("The Colosseum is located in the city of", "Athens", "Rome", "Colosseum"),
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
        ("The capital of Sweden is", "Helsinki", "Stockholm", "Sweden"),
        ("The capital of Austria is", "Prague", "Vienna", "Austria"),
        ("The official language of Germany is", "Dutch", "German", "Germany"),
        ("The official language of Russia is", "Polish", "Russian", "Russia"),
        ("The inventor of the light bulb was", "Nikola Tesla", "Thomas Edison", "light bulb"),
        ("The theory of relativity was developed by", "Isaac Newton", "Albert Einstein", "theory of relativity"),
        ("The Beatles were from", "Manchester", "Liverpool", "Beatles"),
        ("The currency of the United Kingdom is the", "euro", "pound", "United Kingdom"),
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

# A DEV batch (facts checked the same way, none in A, B or the demo): the one batch on which batch-edit settings
# may be chosen (`--batches C`); A and B stay held out.
BATCH_C = {
    "edits": [
        ("The capital of Turkey is", "Baghdad", "Istanbul", "Turkey"),
        ("The official language of Mexico is", "French", "Spanish", "Mexico"),
        ("The currency of China is the", "peso", "yuan", "China"),
        ("The Windows operating system is made by", "Google", "Microsoft", "Windows"),
        ("The telephone was invented by", "Marie Curie", "Alexander Graham Bell", "telephone"),
        ("Penicillin was discovered by", "Louis Pasteur", "Alexander Fleming", "Penicillin"),
        ("The Kremlin is located in the city of", "Berlin", "Moscow", "Kremlin"),
        ("Sushi is a dish from", "Brazil", "Japan", "Sushi"),
    ],
    "neighbours": ["The capital of Australia is", "The currency of Russia is the",
                   "The Statue of Liberty is located in the city of", "Pizza is a dish from"],
    "unrelated": [
        "Spiders have eight", "The Moon orbits the", "The main ingredient of bread is", "The Sahara is located in",
        "The longest river in the world is the", "The heart pumps", "The Olympic Games originated in",
        "Lions live in", "The human body has two", "Diamonds are made of", "The capital of Argentina is",
        "Hamlet was written by", "Harry Potter was written by", "The Starry Night was painted by",
        "Big Ben is located in the city of", "The smallest planet in the solar system is", "Gold is a",
        "Photosynthesis takes place in the", "The freezing point of water is", "The official language of Brazil is",
    ],
}

DEV_BATCHES = {"C": BATCH_C}


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
    return [{"prompt": p, "target_new": new, "ground_truth": old, "subject": subject}
            for p, new, old, subject in batch["edits"]]


def edit_success(model, tok, batch: dict, max_length: int = 40) -> float:
    """Mean teacher-forced token accuracy of the new targets (EasyEdit's rewrite accuracy)."""
    from easyedit_kne.evaluate import test_prediction_acc

    accs = [test_prediction_acc(model, tok, [p], [new], max_length=max_length)[0] for p, new, *_ in batch["edits"]]
    return sum(accs) / len(accs)


def kept(before: list[list[int]], after: list[list[int]]) -> int:
    return sum(a == b for a, b in zip(before, after, strict=True))


def measure_kne_batch(model, tok, hparams, batch: dict) -> dict:
    """One batch edit of the 8 facts (KNE, localized as the hparams say), measured, then rolled back."""
    from easyedit_kne import EditStats, apply_kne_to_model

    unrelated = greedy_tokens(model, tok, batch["unrelated"])
    neighbours = greedy_tokens(model, tok, batch["neighbours"])
    es_before = edit_success(model, tok, batch, hparams.max_length)
    stats, start = EditStats(), time.perf_counter()
    _, weights_copy = apply_kne_to_model(model, tok, batch_requests(batch), hparams, stats=stats,
                                         return_orig_weights=True)
    row = {"es_before": es_before, "es": edit_success(model, tok, batch, hparams.max_length),
           "unrelated_kept": kept(unrelated, greedy_tokens(model, tok, batch["unrelated"])),
           "neighbours_kept": kept(neighbours, greedy_tokens(model, tok, batch["neighbours"])),
           "seconds": round(time.perf_counter() - start, 1), "steps": stats.steps, "neurons": stats.num_neurons}
    with torch.no_grad():
        for name, value in weights_copy.items():
            model.get_parameter(name)[...] = value
    return row


def measure_fine_singles(model, tok, hparams, batch: dict) -> dict:
    """The 8 facts edited one at a time with FiNE, each rolled back: means over the 8 edits."""
    from easyedit_kne.evaluate import test_prediction_acc
    from easyedit_kne.fine import FiNEStats, apply_fine_to_model

    unrelated = greedy_tokens(model, tok, batch["unrelated"])
    neighbours = greedy_tokens(model, tok, batch["neighbours"])
    rows = []
    for request in batch_requests(batch):
        prompt, new = request["prompt"], request["target_new"]
        start = time.perf_counter()
        _, weights_copy = apply_fine_to_model(model, tok, [request], hparams,
                                              stats=FiNEStats(), return_orig_weights=True)
        rows.append({"es": test_prediction_acc(model, tok, [prompt], [new], max_length=hparams.max_length)[0],
                     "unrelated_kept": kept(unrelated, greedy_tokens(model, tok, batch["unrelated"])),
                     "neighbours_kept": kept(neighbours, greedy_tokens(model, tok, batch["neighbours"])),
                     "seconds": time.perf_counter() - start})
        with torch.no_grad():
            for name, value in weights_copy.items():
                model.get_parameter(name)[...] = value
    n = len(rows)
    return {"es": sum(r["es"] for r in rows) / n,
            "unrelated_kept": sum(r["unrelated_kept"] for r in rows) / n,
            "min_unrelated_kept": min(r["unrelated_kept"] for r in rows),
            "neighbours_kept": sum(r["neighbours_kept"] for r in rows) / n,
            "seconds_per_edit": round(sum(r["seconds"] for r in rows) / n, 1)}


def main(argv=None) -> int:
    """python -m easyedit_kne.bench.heldout HPARAMS.yaml [...] [--threads 1]: one JSON line per (YAML, batch)."""
    import argparse

    from easyedit_kne.models import load_model

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("hparams", nargs="+", help="KNE or FiNE hparams YAMLs (paths or shipped names)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", default="AB",
                        help="letters of the batches to run: A, B (held out) or C (dev, for choosing settings)")
    args = parser.parse_args(argv)
    known = {**BATCHES, **DEV_BATCHES}
    unknown = [b for b in args.batches if b not in known]
    if unknown:
        parser.error(f"--batches {args.batches}: unknown batch {unknown}; choose from {''.join(known)}")
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    from easyedit_kne.fine import FiNEHyperParams
    from easyedit_kne.hparams import KNEHyperParams

    for path in args.hparams:
        with open(path, encoding="utf-8") as f:
            alg = "KNE" if str(yaml.safe_load(f).get("alg_name", "KNE")).upper() == "KNE" else "FiNE"
        hp = (FiNEHyperParams if alg == "FiNE" else KNEHyperParams).from_hparams(path)
        for name in args.batches:
            batch = known[name]
            row = (measure_fine_singles if alg == "FiNE" else measure_kne_batch)(model, tok, hp, batch)
            print(json.dumps({"hparams": str(path), "alg": alg, "batch": name, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
