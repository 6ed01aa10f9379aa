"""Finding the target modules of a model and the axis along which their neurons lie.

A target module is a linear map inside a transformer block, named by its suffix inside the block
("mlp.down_proj", "mlp.c_proj", "self_attn.q_proj", ...). A neuron is one weight vector of the map:
a row of W (output unit, `out` axis) or a column of W (input unit, `in` axis). GPT-2's Conv1D stores W
transposed ([d_in, d_out]); everything here speaks of the map, never of the storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Value layers of the FFN: their input units are the FFN's intermediate neurons.
VALUE_LAYER_NAMES = ("down_proj", "fc_out", "dense_4h_to_h", "fc2", "w2")
VALUE_LAYER_SUFFIXES = ("mlp.c_proj",)


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear_map(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_value_layer(suffix: str) -> bool:
    return suffix.split(".")[-1] in VALUE_LAYER_NAMES or suffix.endswith(VALUE_LAYER_SUFFIXES)


def resolve_axis(suffix: str, axis: str) -> str:
    if axis == "auto":
        return "in" if is_value_layer(suffix) else "out"
    if axis not in ("in", "out"):
        raise ValueError(f"neuron_axis={axis!r} is not allowed: choose one of auto, in, out")
    return axis


@dataclass
class TargetModule:
    name: str  # full name as in model.named_modules()
    layer: int
    suffix: str  # module type inside a block, e.g. "mlp.down_proj"
    module: nn.Module
    axis: str  # "in" (columns of W) or "out" (rows of W)

    @property
    def conv1d(self) -> bool:
        return is_conv1d(self.module)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def d_in(self) -> int:
        w = self.module.weight
        return w.shape[0] if self.conv1d else w.shape[1]

    @property
    def d_out(self) -> int:
        w = self.module.weight
        return w.shape[1] if self.conv1d else w.shape[0]

    @property
    def num_neurons(self) -> int:
        return self.d_in if self.axis == "in" else self.d_out

    @property
    def other_dim(self) -> int:
        return self.d_out if self.axis == "in" else self.d_in

    def weight_as_map(self) -> torch.Tensor:
        """W with shape [d_out, d_in] (a view; Conv1D's storage is transposed)."""
        w = self.module.weight
        return w.t() if self.conv1d else w

    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the longest list whose items share one class."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if len({type(m) for m in mod}) == 1 and any(True for _ in mod[0].modules()):
                if best is None or len(mod) > len(best[1]):
                    best = (name, mod)
    if best is None:
        raise ValueError(f"{type(model).__name__}: found no list of transformer blocks (an nn.ModuleList)")
    return best


def candidate_suffixes(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if n and is_linear_map(m)]


def find_target_modules(model: nn.Module, target_modules, layers=(), neuron_axis: str = "auto"
                        ) -> list[TargetModule]:
    """Resolve `target_modules` (suffixes) × `layers` (empty = all) to TargetModules, in block order."""
    prefix, blocks = find_blocks(model)
    n_layers = len(blocks)
    layers = list(layers) if layers else list(range(n_layers))
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers={bad} out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
    first = dict(blocks[0].named_modules())
    for suffix in target_modules:
        if suffix not in first or not is_linear_map(first[suffix]):
            raise ValueError(
                f"target_modules: {suffix!r} is not a linear module of block 0 of {type(model).__name__}; "
                f"candidates: {candidate_suffixes(blocks[0])}")
    out = []
    for i in layers:
        mods = dict(blocks[i].named_modules())
        for suffix in target_modules:
            m = mods.get(suffix)
            if m is None or not is_linear_map(m):
                raise ValueError(f"target_modules: block {i} has no linear module {suffix!r}")
            out.append(TargetModule(f"{prefix}.{i}.{suffix}", i, suffix, m, resolve_axis(suffix, neuron_axis)))
    return out


def targets_from_hparams(model: nn.Module, hparams) -> list[TargetModule]:
    return find_target_modules(model, hparams.target_modules, hparams.layers, hparams.neuron_axis)


def model_device(model: nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return emb.weight.device
    return next(model.parameters()).device


def check_not_offloaded(named_modules, method: str) -> None:
    """Raise before anything changes if a target weight is not materialized: on the `meta` device, as
    accelerate leaves weights that a device_map offloads to cpu or disk (loaded only during forward)."""
    offloaded = [name for name, m in named_modules if m.weight.device.type == "meta"]
    if offloaded:
        shown = ", ".join(offloaded[:4]) + (f" and {len(offloaded) - 4} more" if len(offloaded) > 4 else "")
        raise ValueError(
            f"{method}: the weight of {shown} is offloaded (on the meta device: device_map put it on cpu or "
            f"disk), and {method} writes the edit into the weights in place. Load the model without offload "
            "(device_map with enough GPU memory for every layer, e.g. max_memory, or no device_map and "
            ".to(device)). The model was left unchanged")
