"""FiNEHyperParams: the EasyEdit-compatible configuration of a FiNE run.

FiNE (Pan et al., "Precise Localization of Memories: A Fine-grained Neuron-level Knowledge Editing
Technique for LLMs", ICLR 2025). The method's own fields keep the names of the authors' YAMLs
(github.com/opanhw/FiNE, hparams/FINE/*.yaml): `epochs`, `lr`, `alpha` (KL weight), `beta`
(repetition-penalty weight), `gamma` (L2-norm weight), `neuron_num`, `early_stop_prob`, `last_layer`.
Their module templates (`rewrite_module_tmp`, `ln_f_module`, ...) are replaced by one `value_module`
suffix, resolved per architecture when "auto". Every value is checked at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hparams import HyperParamsBase, _as_number, _check_range

# FFN output projections ("value layers"), in the order `value_module: auto` tries them in block 0.
VALUE_MODULE_CANDIDATES = (
    "mlp.down_proj",  # Llama, Qwen2, Mistral, Gemma, ...
    "mlp.c_proj",  # GPT-2 (Conv1D)
    "mlp.fc_out",  # GPT-J
    "mlp.dense_4h_to_h",  # GPT-NeoX / Pythia
    "mlp.fc2",  # OPT-style / Phi
)


# The authors' YAML fields (their FINEHyperParams) that do not change what this implementation computes:
# module templates other than `rewrite_module_tmp` (blocks, the final norm and lm_head are found on the
# model) and the statistics/bookkeeping fields they inherit from ROME. Accepted and ignored.
AUTHORS_IGNORED_FIELDS = (
    "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module",
    "layer_projection_tmp", "stats_dir", "fact_token", "context_template_length_params", "mom2_adjustment",
    "mom2_dataset", "mom2_n_samples", "mom2_dtype", "modified", "padding",
)
# The authors' fields that select other variants (a fixed layer, random neurons, an EOS target): accepted
# at their defaults only.
AUTHORS_VARIANT_DEFAULTS = {"layer": None, "add_eos": False, "random": False, "add_random": False,
                            "layer_start": None, "layer_end": None}


def value_module_from_template(template: str) -> str:
    """The authors' `rewrite_module_tmp` ("model.layers.{}.mlp.down_proj") as a suffix inside a block."""
    if not isinstance(template, str) or "{}." not in template:
        raise ValueError(f"rewrite_module_tmp={template!r}: expected a template like 'model.layers.{{}}.mlp.down_proj'")
    return template.split("{}.", 1)[1]


@dataclass
class FiNEHyperParams(HyperParamsBase):
    """Hyper-parameters of FiNE. Every field except `model_name` has a default (the paper's, where it has one)."""

    ALG_NAME = "FiNE"
    ALG_NAMES = ("FiNE", "FINE")  # ours, and the authors' (github.com/opanhw/FiNE hparams/FINE/*.yaml)

    @classmethod
    def from_dict(cls, config: dict, source: str = "hparams"):
        """Also reads the authors' YAMLs: alg_name FINE, `rewrite_module_tmp` (-> value_module), their other
        fields ignored (AUTHORS_IGNORED_FIELDS) or, for variants, accepted at their defaults only."""
        config = dict(config)
        alg = config.get("alg_name", cls.ALG_NAME)
        if alg not in cls.ALG_NAMES:
            raise ValueError(f"{source}: alg_name={alg!r}, but {cls.__name__} needs alg_name: FiNE (or FINE)")
        template = config.pop("rewrite_module_tmp", None)
        if template is not None:
            suffix = value_module_from_template(template)
            if config.setdefault("value_module", suffix) != suffix:
                raise ValueError(f"{source}: value_module={config['value_module']!r} contradicts "
                                 f"rewrite_module_tmp={template!r}; give one of them")
        for name in AUTHORS_IGNORED_FIELDS:
            config.pop(name, None)
        for name, default in AUTHORS_VARIANT_DEFAULTS.items():
            if name in config and config.pop(name) != default:
                raise ValueError(f"{source}: {name} (a variant of the authors' code) is not supported; remove it "
                                 f"or set it to {default!r}")
        config["alg_name"] = cls.ALG_NAME
        hp = super().from_dict(config, source)
        hp.alg_name = alg  # EasyEdit looks the method up by this name; both are registered
        return hp

    alg_name: str = "FiNE"
    # --- localization ---
    value_module: str = "auto"  # FFN output projection inside a block; its input units are the neurons
    neuron_num: int = 5  # neurons kept per target token
    last_layer: int = 3  # the last `last_layer` blocks are never edited
    # --- editing ---
    epochs: int = 50
    lr: float = 1e-3  # paper: 5e-3 for Llama-2-7B, 1e-3 for GPT-J-6B and Llama-3-8B
    alpha: float = 1.0  # weight of KL(original || edited) on the prompt
    beta: float = 10.0  # weight of the repetition penalty
    gamma: float = 0.1  # weight of the L2 norm of the deltas
    kl_essence_weight: float = 0.0  # not the authors': KL after "{subject} is a", ... (easyedit_kne.regularizers)
    early_stop_prob: float | None = 0.9  # stop once every target token's probability exceeds it
    weight_decay: float = 0.0
    seed: int = 42
    # "token": one delta per selected (target token, neuron) pair, a neuron picked for two tokens moving by
    # their sum (the authors' code); "neuron": one delta per unique neuron (this package's earlier behaviour,
    # kept to measure the difference; docs/fine.md)
    delta_per: str = "token"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.alg_name not in self.ALG_NAMES:
            raise ValueError(f"alg_name={self.alg_name!r}: FiNEHyperParams needs alg_name='FiNE' (or 'FINE')")
        if self.model_name is None or (isinstance(self.model_name, str) and not self.model_name):
            raise ValueError("model_name is required: an HF path/id, a config name, or a (model, tok) tuple")
        for name in ("batch_size", "max_length", "neuron_num", "last_layer", "epochs", "seed"):
            setattr(self, name, _as_number(name, getattr(self, name), int))
        for name in ("lr", "alpha", "beta", "gamma", "weight_decay", "kl_essence_weight"):
            setattr(self, name, _as_number(name, getattr(self, name), float))
        _check_range("batch_size", self.batch_size, 1, None, allowed="an integer >= 1")
        _check_range("max_length", self.max_length, 2, None, allowed="an integer >= 2")
        _check_range("neuron_num", self.neuron_num, 1, None, allowed="an integer >= 1 (neurons per target token)")
        _check_range("last_layer", self.last_layer, 0, None,
                     allowed="an integer >= 0 (how many final blocks are excluded), below the number of blocks")
        _check_range("epochs", self.epochs, 1, None, allowed="an integer >= 1")
        _check_range("lr", self.lr, 0, None, lo_open=True, allowed="a finite number > 0")
        for name in ("alpha", "beta", "gamma", "weight_decay", "kl_essence_weight"):
            _check_range(name, getattr(self, name), 0, None, allowed="a finite number >= 0")
        if self.early_stop_prob is not None:
            self.early_stop_prob = _as_number("early_stop_prob", self.early_stop_prob, float)
            _check_range("early_stop_prob", self.early_stop_prob, 0, 1, lo_open=True,
                         allowed="0 < early_stop_prob <= 1, or null for no early stop")
        if self.delta_per not in ("token", "neuron"):
            raise ValueError(f"delta_per={self.delta_per!r}: give 'token' (one delta per (target token, neuron) pair, "
                             "the authors') or 'neuron' (one delta per unique neuron)")
        if not isinstance(self.value_module, str) or not self.value_module.strip():
            raise ValueError(
                f"value_module={self.value_module!r}: give 'auto' or the FFN output projection's suffix inside "
                f"a block, one of {', '.join(VALUE_MODULE_CANDIDATES)}")
        for name in ("model_parallel", "fp16", "use_chat_template"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
