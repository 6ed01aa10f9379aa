"""Parameters' requires_grad flags and the module's train/eval mode, kept across a block of code."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def kept_flags(model, *, freeze: bool = False):
    """requires_grad of every parameter and `model.training` restored on any exit.

    `freeze=True` also freezes every parameter and puts the model in eval mode for the duration (so a
    backward reaches only tensors trained outside the model: KNE's blocks, attribution's inputs)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        if freeze:
            for p, _ in flags:
                p.requires_grad_(False)
            model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
