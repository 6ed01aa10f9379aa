"""The KnowEdit benchmark harness, inside the package so that a wheel has it.

One file per step: requests.py (the evaluated items and KNE's held-out localization items), method_base.py
(the EditMethod interface), ours.py (KNE, FiNE), easyedit_methods.py (EasyEdit's FT-L, FT-M, LoRA, ROME,
MEMIT), adalora.py, covariance.py (MEMIT/ROME statistics), methods.py (method.kind -> a method),
evaluator.py, case_log.py (cases.jsonl), runner.py (single / batch / sequential loops), summary.py,
run_knowedit.py (the Hydra entry point: `easyedit-kne knowedit ...`), compare.py (tables, CSV, plots) and
speed/ (the speed and memory bench). Hydra configs: conf/ (package data). Importing this package imports
nothing heavy; the modules import torch / hydra as they need them.
"""
