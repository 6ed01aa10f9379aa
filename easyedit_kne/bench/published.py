"""Published KnowEdit numbers for another model (Llama-2-7b-chat), shown beside ours for reference only: the
KNE paper's Table 1 and EasyEdit's KnowEdit table (its examples/KnowEdit.md). Each value is
(Edit Succ., Portability, Locality, Fluency), x100 as in the KnowEdit tables. They were measured on another
model, with other hyperparameters and hardware: they are not comparable with our SmolLM2-135M numbers."""

from __future__ import annotations

PUBLISHED_MODEL = "Llama-2-7b-chat"
METRICS = ("Edit Succ.", "Portability", "Locality", "Fluency")

PUBLISHED = {
    "KNE paper, Table 1": {
        "zsre": {"FT": (36.88, 8.72, 0.31, 471.29), "FT-L": (54.65, 45.02, 71.12, 474.18),
                 "AdaLoRA": (69.86, 52.95, 72.21, 532.82), "ROME": (96.57, 52.20, 27.14, 570.47),
                 "MEMIT": (83.07, 51.43, 25.46, 559.72), "KNE": (97.75, 58.02, 76.85, 571.93)},
        "counterfact": {"FT": (26.78, 16.94, 0.29, 483.71), "FT-L": (51.12, 39.07, 62.51, 544.80),
                        "AdaLoRA": (72.14, 55.17, 66.78, 553.85), "ROME": (83.21, 38.69, 65.40, 578.84),
                        "MEMIT": (83.41, 40.09, 63.68, 568.58), "KNE": (99.02, 53.88, 65.09, 591.25)},
        "recent": {"FT": (31.24, 15.91, 3.65, 428.67), "FT-L": (71.18, 48.71, 63.70, 549.35),
                   "AdaLoRA": (65.61, 47.22, 55.78, 537.51), "ROME": (85.08, 37.45, 66.20, 574.28),
                   "MEMIT": (85.32, 37.94, 64.78, 566.66), "KNE": (99.48, 63.36, 37.58, 581.49)},
    },
    "EasyEdit, examples/KnowEdit.md": {
        "zsre": {"FT-M": (99.98, 60.31, 89.78, 552.26), "AdaLoRA": (100.00, 58.03, 75.76, 563.56),
                 "ROME": (96.77, 52.63, 53.67, 573.75), "MEMIT": (95.37, 52.67, 48.32, 563.31),
                 "SERAC": (99.67, 56.48, 30.23, 410.89)},
        "counterfact": {"FT-M": (100.00, 74.36, 76.76, 575.62), "AdaLoRA": (100.00, 69.89, 70.31, 580.29),
                        "ROME": (98.57, 55.92, 51.97, 584.04), "MEMIT": (98.05, 58.56, 46.62, 575.96),
                        "SERAC": (99.99, 76.07, 98.96, 549.91)},
        "recent": {"FT-M": (100.00, 65.44, 64.33, 574.32), "AdaLoRA": (100.00, 64.69, 56.42, 579.57),
                   "ROME": (97.18, 55.25, 54.77, 579.66), "MEMIT": (97.05, 56.37, 52.15, 573.89),
                   "SERAC": (98.68, 63.52, 100.00, 553.19)},
    },
}


def published_markdown(dataset_names: dict[str, str]) -> str:
    """Both published tables in Markdown, one row per (dataset, method), labelled as another model's."""
    lines = [f"## Published numbers for another model ({PUBLISHED_MODEL}), for reference only", "",
             f"These were measured on {PUBLISHED_MODEL}, not on SmolLM2-135M, with other hyperparameters and "
             "hardware, and have no confidence intervals: they show the published scale of each metric, they "
             "are not comparable with the numbers above.", ""]
    for source, table in PUBLISHED.items():
        lines += [f"### {source} ({PUBLISHED_MODEL}; published numbers for another model)", "",
                  "| Dataset | Method | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
        for dataset, rows in table.items():
            for method, values in rows.items():
                lines.append(f"| {dataset_names.get(dataset, dataset)} | {method} | "
                             + " | ".join(f"{v:.2f}" for v in values) + " |")
        lines.append("")
    return "\n".join(lines)
