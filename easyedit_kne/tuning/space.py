"""Study configuration: search space, objective, items. Defaults: kne_space.yaml / fine_space.yaml here.

Search-space entries are `{type: categorical, choices: [...]}`, `{type: float, low, high, log}` or
`{type: int, low, high, step}`. Most names are hparams fields; three are special (KNE):
* `target`: "module[,module...]:axis", e.g. "mlp.up_proj:out" -> target_modules and neuron_axis;
* `layers`: "all" or a contiguous band "a-b" (inclusive) -> layers;
* `localization`: "shared" (one ensemble from `localization_items` items of each dataset's localization
  split, reused for every edit) or "edited" (localization on the edited request itself, per edit).

`seeds:` (optional) lists parameter sets, one value per space name, that a new study runs first (the
shipped YAML, the authors' settings) before the sampler takes over.

Objective (default): maximize mean(Locality, Portability) subject to Edit Succ. >= 99. The constraint is
enforced by the score: a trial that meets it scores mean(Locality, Portability) in [0, 100]; one that
misses it scores Edit_Succ - 200, in [-200, -101], so every feasible trial beats every infeasible one,
and among infeasible trials the one with the higher Edit Succ. ranks higher.
"""

from __future__ import annotations

import copy
from importlib import resources

import yaml

SPECIAL = ("target", "layers", "localization")


def default_config(method: str) -> dict:
    name = {"KNE": "kne_space.yaml", "FiNE": "fine_space.yaml"}.get(method)
    if name is None:
        raise ValueError(f"method={method!r}: choose KNE or FiNE")
    return yaml.safe_load(resources.files("easyedit_kne.tuning").joinpath(name).read_text(encoding="utf-8"))


def load_config(path: str | None, method: str = "KNE", overrides: dict | None = None) -> dict:
    cfg = default_config(method)
    if path:
        with open(path, encoding="utf-8") as f:
            user = yaml.safe_load(f) or {}
        method = user.get("method", method)
        cfg = default_config(method)
        for k, v in user.items():
            cfg[k] = v
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg[k] = v
    cfg["method"] = cfg.get("method", method)
    for key in ("space", "datasets", "objective"):
        if not isinstance(cfg.get(key), dict) or not cfg[key]:
            raise ValueError(f"tune config: '{key}' must be a non-empty mapping")
    return cfg


def suggest(trial, space: dict) -> dict:
    """Sampled values, one per space entry (the trial's raw parameters)."""
    out = {}
    for name, spec in space.items():
        kind = spec.get("type", "categorical")
        if kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "float":
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                            log=bool(spec.get("log", False)))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)))
        else:
            raise ValueError(f"space.{name}: type={kind!r}; choose categorical, float or int")
    return out


def parse_layers(value) -> list[int]:
    if value in (None, "all", ""):
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    a, _, b = str(value).partition("-")
    return list(range(int(a), int(b or a) + 1))


def to_hparams(base: dict, params: dict) -> tuple[dict, str]:
    """(hparams dict, localization mode) from the base hparams and a trial's parameters."""
    hp = copy.deepcopy(base)
    mode = "shared"
    for name, value in params.items():
        if name == "target":
            modules, _, axis = str(value).rpartition(":")
            hp["target_modules"] = modules.split(",")
            hp["neuron_axis"] = axis or "auto"
        elif name == "layers":
            hp["layers"] = parse_layers(value)
        elif name == "localization":
            mode = str(value)
            if mode not in ("shared", "edited"):
                raise ValueError(f"localization={mode!r}: choose shared or edited")
        else:
            hp[name] = value
    return hp, mode


def check_seed(params: dict, space: dict) -> dict:
    """A `seeds:` entry of a study config: every search-space name given, each value inside its range."""
    missing = [name for name in space if name not in params]
    unknown = [name for name in params if name not in space]
    if missing or unknown:
        raise ValueError(f"seeds entry {params}: give exactly the space's names (missing {missing}, "
                         f"not in the space {unknown})")
    for name, spec in space.items():
        value = params[name]
        if spec["type"] == "categorical" and value not in spec["choices"]:
            raise ValueError(f"seeds entry: {name}={value!r} is not one of {spec['choices']}")
        if spec["type"] in ("float", "int") and not spec["low"] <= value <= spec["high"]:
            raise ValueError(f"seeds entry: {name}={value!r} is outside [{spec['low']}, {spec['high']}]")
    return dict(params)


def score(summary_by_dataset: dict, objective: dict) -> float:
    """The objective value of per-dataset KnowEdit summaries (see the module docstring)."""
    cons = objective.get("constraint") or {}
    metric, floor = cons.get("metric", "Edit_Succ"), float(cons.get("min", 99))
    maximize = objective.get("maximize", ["Locality", "Portability"])
    values, worst = [], 100.0
    for s in summary_by_dataset.values():
        worst = min(worst, s.get(metric) if s.get(metric) is not None else 0.0)
        values += [s[m] for m in maximize if s.get(m) is not None]
    if worst < floor:
        return worst - 200.0
    return sum(values) / len(values) if values else 0.0
