"""`easyedit-kne tune`: an Optuna search of KNE's (or FiNE's) hparams on the dev split (docs/protocol.md).

space.py reads the study config (search space, objective, items); evaluator.py edits and scores dev items
with the model loaded once; study.py runs the resumable study and writes its outputs.
"""
