"""Edit: one KNE or FiNE edit as a small file that can be saved, shipped, applied, stacked and reverted.

A KNE edit changes only the ensemble's rows or columns of a few weights, a FiNE edit a few value vectors.
For each changed weight the edit keeps the indices along one stored dimension and those slices BEFORE and
AFTER the edit, in the weight's own dtype. So:

* `apply` writes `after`: the weights become bit-identical to the edited model;
* `revert` writes `before`: the weights are the base model's again, bit for bit, in any dtype (adding and
  subtracting a delta does not round-trip in bf16/fp16, so no delta is stored);
* stacked edits revert exactly in reverse order; every write first checks that the slices hold what they
  should (`before` to apply, `after` to revert), so an out-of-order revert that cannot be exact is an error.

The file (edit_file.py) is safetensors (tensors `<param>/index|before|after`) whose metadata holds JSON (base and result
fingerprints, requests, hparams, package version) and a SHA-256 over that JSON and every tensor's bytes.
No pickle. Everything (checksum, names, shapes, dtypes, indices, fingerprint) is checked before the first
write, and the writes are all or nothing, so a bad file or a wrong model leaves the model unchanged.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import torch

from .atomic import atomic_path
from .cache import model_fingerprint
from .edit_file import FORMAT, FORMAT_VERSION, pack, unpack

PARTS = ("index", "before", "after")


class EditMismatchError(ValueError):
    """The model does not hold what the edit expects (other base, already applied, out-of-order revert)."""


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality (unlike torch.equal, -0.0 differs from 0.0 and a NaN equals the same NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@dataclass
class ModuleDelta:
    """The slices of one stored weight that an edit changed: weight.index_select(dim, index)."""

    param: str  # parameter name, e.g. "model.layers.3.mlp.up_proj.weight"
    axis: str  # the neurons' axis of the map: "in" (columns) or "out" (rows); Conv1D stores W transposed
    dim: int  # the dimension of the STORED weight that `index` selects
    shape: tuple  # the stored weight's full shape
    index: torch.Tensor  # int64, sorted, unique
    before: torch.Tensor
    after: torch.Tensor

    def check(self, where: str) -> None:
        if self.dim not in (0, 1) or len(self.shape) != 2:
            raise ValueError(f"{where}: dim={self.dim} / shape={self.shape}: expected a 2-D weight, dim 0 or 1")
        idx = self.index
        if idx.dtype != torch.int64 or idx.dim() != 1 or len(idx) == 0:
            raise ValueError(f"{where}: index must be a non-empty 1-D int64 tensor")
        if int(idx.min()) < 0 or int(idx.max()) >= self.shape[self.dim] or bool((idx[1:] <= idx[:-1]).any()):
            raise ValueError(f"{where}: index must be sorted, unique and within 0..{self.shape[self.dim] - 1}")
        want = list(self.shape)
        want[self.dim] = len(idx)
        for part in (self.before, self.after):
            if tuple(part.shape) != tuple(want) or not part.dtype.is_floating_point:
                raise ValueError(f"{where}: slices of shape {tuple(part.shape)} / {part.dtype}; expected "
                                 f"{tuple(want)} of a floating dtype")
        if self.before.dtype != self.after.dtype:
            raise ValueError(f"{where}: before is {self.before.dtype} but after is {self.after.dtype}")

    def current(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().index_select(self.dim, self.index.to(weight.device))


@dataclass
class Edit:
    """A saved KNE/FiNE edit. Build one with `apply_kne_to_model(..., return_edit=True)` (or FiNE's)."""

    modules: list  # [ModuleDelta]
    base_fingerprint: str
    result_fingerprint: str
    alg_name: str = ""
    requests: list = field(default_factory=list)
    hparams: dict = field(default_factory=dict)
    version: str = ""
    created: str = ""

    # ------------------------------------------------------------------ facts
    @property
    def num_neurons(self) -> int:
        return sum(len(m.index) for m in self.modules)

    @property
    def num_bytes(self) -> int:
        """Bytes of tensor data in the file (the JSON header adds a few kB)."""
        return sum(t.numel() * t.element_size() for m in self.modules for t in (m.index, m.before, m.after))

    @property
    def dtype(self) -> torch.dtype | None:
        return self.modules[0].before.dtype if self.modules else None

    def __repr__(self) -> str:
        return (f"Edit({self.alg_name}, {self.num_neurons} neurons in {len(self.modules)} weights, {self.dtype}, "
                f"{self.num_bytes / 1e6:.3f} MB, {len(self.requests)} request(s))")

    # ------------------------------------------------------------------ apply / revert
    def apply(self, model, force: bool = False):
        """Write the edited slices into `model` in place; returns the model.

        Refused (EditMismatchError, model unchanged) when the model's fingerprint differs from the base the
        edit was made on, or its slices differ from `before`. `force=True` skips the fingerprint check and,
        where slices differ, adds the edit's delta instead (approximate; such a module cannot be reverted
        exactly).
        """
        if not force:
            found = model_fingerprint(model)
            if found != self.base_fingerprint:
                why = ("this edit is already applied to it" if found == self.result_fingerprint else
                       "its weights (or dtype) differ from the base model the edit was made on; with stacked "
                       "edits, apply them in the order they were made")
                raise EditMismatchError(
                    f"Edit.apply refused: {why} (model fingerprint {found[:12]}, edit base "
                    f"{self.base_fingerprint[:12]}). Pass force=True to apply it anyway.")
        return self._write(model, "apply", force)

    def revert(self, model, force: bool = False):
        """Write the base slices back; exact, also under later edits that touched other slices.

        Raises EditMismatchError (model unchanged) when a slice no longer holds what this edit wrote: a
        later edit changed it (revert stacked edits last-first) or the edit is not applied. `force=True`
        subtracts the delta there instead (approximate).
        """
        return self._write(model, "revert", force)

    def _write(self, model, action: str, force: bool):
        params = dict(model.named_parameters())
        plan = []
        for m in self.modules:
            weight = params.get(m.param)
            if weight is None:
                raise EditMismatchError(f"Edit.{action}: the model has no parameter {m.param!r}; this edit was made "
                                        "on another architecture. The model was left unchanged.")
            if tuple(weight.shape) != tuple(m.shape):
                raise EditMismatchError(f"Edit.{action}: {m.param} has shape {tuple(weight.shape)} in the model, "
                                        f"{tuple(m.shape)} in the edit. The model was left unchanged.")
            if weight.dtype != m.before.dtype and not force:
                raise EditMismatchError(
                    f"Edit.{action}: {m.param} is {weight.dtype} in the model but the edit was made in "
                    f"{m.before.dtype}; load the model in {m.before.dtype} (or pass force=True for an "
                    "approximate edit). The model was left unchanged.")
            plan.append((m, weight, m.current(weight)))
        expect, write, sign, done_word = (("before", "after", 1.0, "applied") if action == "apply" else
                                          ("after", "before", -1.0, "reverted"))
        stale = [m.param for m, _, cur in plan if not same_bits(cur, getattr(m, expect).to(cur.device))]
        if stale and not force:
            why = ("they differ from the base the edit was made on (already applied, or another edit changed "
                   "them)" if action == "apply" else
                   "they no longer hold what this edit wrote: a later edit changed them (revert stacked edits in "
                   "reverse order, the last applied first) or this edit is not applied")
            raise EditMismatchError(
                f"Edit.{action}: the slices of {len(stale)} weight(s) ({', '.join(stale[:3])}"
                f"{', ...' if len(stale) > 3 else ''}) cannot be {done_word} exactly: {why}. Pass force=True "
                "for an approximate delta. The model was left unchanged.")
        if stale:
            warnings.warn(f"Edit.{action}(force=True): {len(stale)} weight(s) did not hold the expected slices; "
                          "their delta was added in float32 (not exact, not exactly revertible)", stacklevel=3)
        new = []
        for m, weight, cur in plan:
            if m.param in stale:
                delta = (m.after.float() - m.before.float()).to(weight.device)
                new.append((cur.float() + sign * delta).to(weight.dtype))
            else:
                new.append(getattr(m, write).to(weight.device, weight.dtype))
        done = []
        try:
            with torch.no_grad():
                for (m, weight, cur), value in zip(plan, new, strict=True):
                    weight.index_copy_(m.dim, m.index.to(weight.device), value)
                    done.append((m, weight, cur))
        except BaseException:
            with torch.no_grad():
                for m, weight, cur in reversed(done):
                    weight.index_copy_(m.dim, m.index.to(weight.device), cur)
            raise
        return model

    # ------------------------------------------------------------------ file
    def _meta(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": self.version,
            "created": self.created, "alg_name": self.alg_name, "base_fingerprint": self.base_fingerprint,
            "result_fingerprint": self.result_fingerprint, "requests": self.requests, "hparams": self.hparams,
            "modules": [{"param": m.param, "axis": m.axis, "dim": m.dim, "shape": list(m.shape)}
                        for m in self.modules],
        }

    def _tensors(self) -> dict:
        return {f"{m.param}/{part}": getattr(m, part).contiguous() for m in self.modules for part in PARTS}

    def to_bytes(self) -> bytes:
        """The file's bytes (edit_file.py: safetensors, JSON metadata, SHA-256)."""
        return pack(self._meta(), self._tensors())

    def save(self, path: str | os.PathLike) -> None:
        """Write the edit atomically (a reader never sees a half-written file)."""
        data = self.to_bytes()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Edit:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"edit file not found: {path}")
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), source=path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "edit") -> Edit:
        try:
            return _parse(data)
        except Exception as err:
            raise ValueError(f"{source}: not a valid easyedit-kne edit file ({type(err).__name__}: {err}); it is "
                             "corrupted or truncated, or another kind of file. Nothing was applied.") from None


def _parse(data: bytes) -> Edit:
    meta, tensors = unpack(data)
    modules = []
    for spec in meta["modules"]:
        m = ModuleDelta(spec["param"], spec["axis"], int(spec["dim"]), tuple(int(s) for s in spec["shape"]),
                        *(tensors.pop(f"{spec['param']}/{part}") for part in PARTS))
        m.check(m.param)
        modules.append(m)
    if tensors:
        raise ValueError(f"tensors not described by the metadata: {sorted(tensors)[:3]}")
    return Edit(modules, meta["base_fingerprint"], meta["result_fingerprint"], meta.get("alg_name", ""),
                meta.get("requests", []), meta.get("hparams", {}), meta.get("package_version", ""),
                meta.get("created", ""))


class EditRecorder:
    """Records an edit around a merge: create it before the weights change, `finish` after."""

    def __init__(self, model, updates):
        self.base_fingerprint = model_fingerprint(model)
        self.entries = []
        for u in updates:
            dim, _ = u.storage_slices()
            weight = u.module.weight
            index = torch.unique(u.index.detach().to(torch.int64))  # sorted
            before = weight.detach().index_select(dim, index).cpu().clone()
            self.entries.append((f"{u.name}.weight", u.axis, dim, weight, index, before))

    def finish(self, model, requests, hparams) -> Edit:
        from . import __version__

        modules = []
        for param, axis, dim, weight, index, before in self.entries:
            after = weight.detach().index_select(dim, index).cpu().clone()
            modules.append(ModuleDelta(param, axis, dim, tuple(weight.shape), index.cpu(), before, after))
        to_dict = getattr(hparams, "to_dict", None)
        return Edit(modules, self.base_fingerprint, model_fingerprint(model),
                    alg_name=str(getattr(hparams, "alg_name", "")), requests=list(requests),
                    hparams=to_dict() if to_dict else dict(vars(hparams)), version=__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
