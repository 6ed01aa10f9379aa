"""KNEHyperParams: the EasyEdit-compatible configuration of a KNE run.

EasyEdit reads `alg_name`, `model_name`, `device`, `model_parallel`, `fp16`, `batch_size`,
`max_length` (and, through getattr, `evaluation_type` and `use_chat_template`) from every hparams
object; the rest is KNE's own. Every value is checked at construction, so a bad YAML fails before
any model is loaded or any weight is touched.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .quadrature import IG_METHODS  # light: numpy is imported only for Gauss-Legendre nodes

NEURON_AXES = ("auto", "in", "out")
SELECTION_SCOPES = ("global", "per_module_type", "per_layer")
SCORE_AGGREGATIONS = ("max", "mean", "sum")
INITS = ("zero", "kaiming")
OPTIMIZERS = ("adam", "adamw")
STOP_RULES = ("loss", "accuracy")


def _as_number(name: str, value: Any, kind: type) -> Any:
    """EasyEdit YAMLs write numbers like "5e-3" as strings; accept them, reject anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_range(name: str, value: float, lo: float | None, hi: float | None, *, lo_open=False,
                 allowed: str) -> None:
    ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        raise ValueError(f"{name}={value!r} is out of range: allowed {allowed}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(choices)}")


def hparams_root() -> str:
    """The folder of shipped hparams YAMLs: hparams/ at the top of a repository checkout, else the copy the
    wheel carries inside the package (easyedit_kne/hparams_files/, written by setup.py's build step)."""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(package), "hparams")
    if os.path.isdir(checkout) and os.path.isfile(os.path.join(os.path.dirname(package), "setup.cfg")):
        return checkout
    return os.path.join(package, "hparams_files")


def shipped_hparams(alg_name: str) -> dict[str, str]:
    """{name: path} of the YAML files shipped for one method (hparams/<alg_name>/<name>.yaml)."""
    folder = os.path.join(hparams_root(), alg_name)
    if not os.path.isdir(folder):
        return {}
    return {f[: -len(".yaml")]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".yaml")}


def resolve_hparams_file(alg_name: str, path: str | os.PathLike) -> str:
    """A path to an existing YAML file (with or without .yaml), else the shipped file of that name."""
    path = os.fspath(path)
    candidates = [path] if path.endswith((".yaml", ".yml")) or os.path.exists(path) else [path, path + ".yaml"]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    shipped = shipped_hparams(alg_name)
    name = os.path.basename(path)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if os.path.dirname(path) in ("", ".") and name in shipped:
        return shipped[name]
    raise FileNotFoundError(
        f"hparams file not found: {path} is neither a YAML file nor a shipped {alg_name} name; shipped names: "
        f"{', '.join(shipped) or '(none found under ' + hparams_root() + ')'}")


@dataclass
class HyperParamsBase:
    """The attributes EasyEdit reads from every hparams object, and YAML loading (EasyEdit's
    `from_hparams` convention), shared by KNE and FiNE hparams."""

    ALG_NAME = ""

    model_name: Any = None
    alg_name: str = ""
    device: Any = None  # EasyEdit: None -> cuda:0 when available, else cpu; an int means cuda:N
    model_parallel: bool = False
    fp16: bool = False
    batch_size: int = 1
    max_length: int = 40
    evaluation_type: str = "teacher_forcing"
    use_chat_template: bool = False

    @classmethod
    def from_hparams(cls, path: str | os.PathLike):
        """Load a YAML file, by path or by the name of a shipped file (`from_hparams("llama-7b")` reads
        hparams/<ALG_NAME>/llama-7b.yaml, from the repository or from the installed wheel)."""
        import yaml

        path = resolve_hparams_file(cls.ALG_NAME, path)
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a YAML mapping of hparams, got {type(config).__name__}")
        return cls.from_dict(config, source=path)

    @classmethod
    def from_dict(cls, config: dict, source: str = "hparams"):
        config = dict(config)
        alg = config.get("alg_name", cls.ALG_NAME)
        if alg != cls.ALG_NAME:
            raise ValueError(
                f"{source}: alg_name={alg!r}, but {cls.__name__} needs alg_name: {cls.ALG_NAME}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown hparams key(s) {unknown}; allowed keys: {sorted(known)}")
        if "model_name" not in config:
            raise ValueError(f"{source}: model_name is required (an HF path/id or a config name)")
        return cls(**config)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (str, int, float, bool, list, dict, type(None))):
                out[f.name] = v
            else:  # e.g. a (model, tok) tuple as model_name
                out[f.name] = repr(type(v))
        return out


@dataclass
class KNEHyperParams(HyperParamsBase):
    """Hyper-parameters of KNE (see DESIGN §1). Every field except `model_name` has a default."""

    ALG_NAME = "KNE"

    alg_name: str = "KNE"
    # --- where the neurons live ---
    target_modules: list = field(default_factory=lambda: ["mlp.down_proj"])
    layers: list = field(default_factory=list)  # empty = every block
    neuron_axis: str = "auto"
    # --- localization ---
    p: float = 1.0  # percent of targeted neurons kept
    selection_scope: str = "global"
    ig_steps: int = 20
    ig_method: str = "riemann_right"  # quadrature of Eq. 4 (quadrature.IG_METHODS); riemann_right is Eq. 5
    ig_batch_size: int = 64  # most sequences in one attribution pass (memory knob)
    # most requests whose rows share one attribution pass (padded). On a 2-core CPU 4 and 8 ran at 0.75x and 0.62x
    # the items/s of 1 (docs/performance.md §0: the pass is compute-bound and padding adds work), so set 1 there;
    # the default stays 4 because it is part of every committed run's config (changing it would refuse their
    # resume and reproduction) and a latency-bound GPU pass gains from it (scripts/gpu_check.sh measures 1/4/8)
    ig_request_batch: int = 4
    score_aggregation: str = "max"
    localization_size: int = 0  # 0: localize on the edit requests themselves
    localization_data: str | None = None  # KnowEdit-format JSON for a separate localization set
    localization_data_type: str | None = None  # zsre | counterfact | recent | wikibio (None: guess)
    ensemble_path: str | None = None  # a saved ensemble to reuse instead of localizing
    cache_dir: str | None = None  # per-request attribution cache
    # --- editing ---
    num_steps: int = 25
    lr: float = 5e-2
    weight_decay: float = 0.0
    alpha: float = 1.0
    t_loss: float = 1e-2
    seed: int = 42
    init: str = "zero"  # zero | kaiming (the trainable block starts kaiming-uniform, as the authors' code)
    optimizer: str = "adam"  # adam | adamw
    stop_on: str = "loss"  # loss: stop below t_loss | accuracy: stop once every target token is the argmax
    # --- subject specificity (easyedit_kne/regularizers.py, nullspace.py); all off by default ---
    kl_prompt_weight: float = 0.0  # KL to the pre-edit distribution on the edit prompt's own positions
    kl_subject_weight: float = 0.0  # KL to the pre-edit next token on the prompt with its subject swapped
    kl_subject_count: int = 4  # swapped entities per request (from easyedit_kne/data/entities.txt)
    kl_essence_weight: float = 0.0  # KL to the pre-edit next token after "{subject} is a", "{subject} was", ...
    context_prefixes: int = 0  # also train each prompt after this many neutral prefixes (easyedit_kne/contexts.py)
    subject_variants: int = 0  # also train each prompt with up to this many surface variants of its subject
    #                            (no diacritics, plain hyphens, no middle initials: easyedit_kne/subject_variants.py)
    nullspace: bool = False  # project the update onto the null space of preserved-key statistics
    nullspace_text: str | None = None  # .txt (one text a line) or KnowEdit JSON; None: KnowEdit WikiBio
    nullspace_samples: int = 200  # texts used for the statistics
    nullspace_threshold: float = 1e-2  # null space: eigenvalues <= threshold x the largest
    nullspace_cache_dir: str | None = None  # None: ~/.cache/easyedit_kne/nullspace

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.alg_name != self.ALG_NAME:
            raise ValueError(f"alg_name={self.alg_name!r}: KNEHyperParams needs alg_name='KNE'")
        if self.model_name is None or (isinstance(self.model_name, str) and not self.model_name):
            raise ValueError("model_name is required: an HF path/id, a config name, or a (model, tok) tuple")
        for name in ("batch_size", "max_length", "ig_steps", "ig_batch_size", "ig_request_batch", "localization_size",
                     "num_steps", "seed", "kl_subject_count", "context_prefixes", "subject_variants",
                     "nullspace_samples"):
            setattr(self, name, _as_number(name, getattr(self, name), int))
        for name in ("p", "lr", "weight_decay", "alpha", "t_loss", "kl_prompt_weight", "kl_subject_weight",
                     "kl_essence_weight", "nullspace_threshold"):
            setattr(self, name, _as_number(name, getattr(self, name), float))
        _check_range("batch_size", self.batch_size, 1, None, allowed="an integer >= 1")
        _check_range("max_length", self.max_length, 2, None, allowed="an integer >= 2")
        _check_range("p", self.p, 0, 100, lo_open=True, allowed="0 < p <= 100 (percent of neurons kept)")
        _check_range("ig_steps", self.ig_steps, 1, None, allowed="an integer >= 1")
        _check_range("ig_batch_size", self.ig_batch_size, 2, None, allowed="an integer >= 2")
        _check_range("ig_request_batch", self.ig_request_batch, 1, None,
                     allowed="an integer >= 1 (requests sharing one attribution pass)")
        _check_range("localization_size", self.localization_size, 0, None,
                     allowed="an integer >= 0 (0 = localize on the edit requests)")
        _check_range("num_steps", self.num_steps, 1, None, allowed="an integer >= 1")
        _check_range("lr", self.lr, 0, None, lo_open=True, allowed="a finite number > 0")
        _check_range("weight_decay", self.weight_decay, 0, None, allowed="a finite number >= 0")
        _check_range("alpha", self.alpha, 0, None, lo_open=True, allowed="a finite number > 0")
        _check_range("t_loss", self.t_loss, 0, None, allowed="a finite number >= 0")
        _check_range("kl_prompt_weight", self.kl_prompt_weight, 0, None, allowed="a finite number >= 0 (0 = off)")
        _check_range("kl_subject_weight", self.kl_subject_weight, 0, None,
                     allowed="a finite number >= 0 (0 = off)")
        _check_range("kl_subject_count", self.kl_subject_count, 1, None, allowed="an integer >= 1")
        _check_range("kl_essence_weight", self.kl_essence_weight, 0, None,
                     allowed="a finite number >= 0 (0 = off)")
        _check_range("context_prefixes", self.context_prefixes, 0, None,
                     allowed="an integer >= 0 (prefixed copies of each prompt trained; 0 = off)")
        _check_range("subject_variants", self.subject_variants, 0, None,
                     allowed="an integer >= 0 (subject variants of each prompt trained; 0 = off)")
        _check_range("nullspace_samples", self.nullspace_samples, 1, None, allowed="an integer >= 1")
        _check_range("nullspace_threshold", self.nullspace_threshold, 0, 1, lo_open=True,
                     allowed="0 < threshold <= 1 (fraction of the largest eigenvalue)")
        _check_choice("init", self.init, INITS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("stop_on", self.stop_on, STOP_RULES)
        _check_choice("neuron_axis", self.neuron_axis, NEURON_AXES)
        _check_choice("selection_scope", self.selection_scope, SELECTION_SCOPES)
        _check_choice("score_aggregation", self.score_aggregation, SCORE_AGGREGATIONS)
        _check_choice("ig_method", self.ig_method, IG_METHODS)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not isinstance(self.target_modules, (list, tuple)) or not self.target_modules or not all(
                isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(
                f"target_modules={self.target_modules!r}: give a non-empty list of module suffixes "
                "inside a block, e.g. ['mlp.down_proj']")
        self.target_modules = list(self.target_modules)
        if isinstance(self.layers, int):
            self.layers = [self.layers]
        if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers):
            raise ValueError(f"layers={self.layers!r}: give a list of block indices >= 0 (empty = all)")
        self.layers = sorted(set(self.layers))
        for name in ("model_parallel", "fp16", "use_chat_template", "nullspace"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
