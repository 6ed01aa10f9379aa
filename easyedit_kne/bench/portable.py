"""Result files without machine paths: what the runner writes into run_config.json, summary.json and the
ensemble is made portable here, so a results folder can be committed, moved to another machine and resumed.

Every absolute path under a known root is written relative to that root, with the root named:

    <knowedit_dir>/zsre/ZsRE-test-all.json   ->  ${knowedit_dir}/zsre/ZsRE-test-all.json
    <the run's folder>/ensemble.safetensors   ->  ensemble.safetensors
    <the repository>/hparams/KNE/x.yaml       ->  hparams/KNE/x.yaml      (or the installed package's copy)
    <the model's folder>                      ->  ${model:<model.name>}   (a config name or a folder's name)
    <EasyEdit checkout>/...                   ->  ${easyedit.path}/...

and any other absolute path keeps only its file name (`${elsewhere}/name`). The model is then identified by
its config name and the fingerprint of its weights (`model.sha256`, easyedit_kne.cache.model_fingerprint), so
the resume check (run_config.json's sha256) compares the same text on every machine. `audit()` lists the
absolute paths left in a JSON value; the tests run it on everything a run writes.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

# absolute paths under the usual top folders of machines (not "1/2", not URLs), and Windows drive paths
_TOPS = "work|root|home|tmp|Users|mnt|data|scratch|private|var|opt|srv|usr|shared|gpfs|lustre|nfs|Volumes"
ABSOLUTE = re.compile(r"(?<![\w.$}/:])(/(?:" + _TOPS + r")(?![\w.-])(?:/[^\s\"',;:)\]]*)?|[A-Za-z]:\\[^\s\"',;]*)")


def _real(path) -> str | None:
    if path in (None, "", "None", "null"):
        return None
    return os.path.realpath(os.path.expanduser(str(path)))


def _written(path) -> str | None:
    """The absolute form of a path as written (links kept), for text that was written before resolving."""
    if path in (None, "", "None", "null"):
        return None
    return os.path.abspath(os.path.expanduser(str(path)))


def run_roots(cfg, out, model_path: str | None = None) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs for one run, longest prefix first."""
    from .config import PACKAGE_DIR, repo_root

    pairs = [(out, "."), (cfg.get("knowedit_dir"), "${knowedit_dir}")]
    if model_path is not None and os.path.isabs(str(model_path)):
        pairs.append((model_path, "${model:%s}" % cfg.model.name))
    easyedit = cfg.get("easyedit") or {}
    pairs += [(easyedit.get("path"), "${easyedit.path}"), (easyedit.get("stats_dir"), "${easyedit.stats_dir}"),
              (repo_root(), ""), (PACKAGE_DIR.parent, ""), (os.getcwd(), "")]
    return roots(pairs)


def roots(pairs) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs from (path, placeholder) pairs, longest prefix first; None skipped."""
    seen, result = set(), []
    for path, name in pairs:
        # the resolved form and the form as written (links kept): text may hold either
        for form in (_real(path), _written(path)):
            if form and form != "/" and form not in seen:
                seen.add(form)
                result.append((form, name))
    return sorted(result, key=lambda p: -len(p[0]))


def _join(name: str, rest: str) -> str:
    rest = rest.lstrip("/")
    if name in ("", "."):
        return rest or "."
    return f"{name}/{rest}" if rest else name


def portable_text(text: str, roots: list[tuple[str, str]]) -> str:
    """`text` with every absolute path rewritten (see the module docstring)."""
    def one(match: re.Match) -> str:
        path = match.group(0)
        real = os.path.realpath(path) if os.path.isabs(path) else path
        for cand in dict.fromkeys((path, real)):
            for prefix, name in roots:
                if cand == prefix or cand.startswith(prefix + "/"):
                    return _join(name, cand[len(prefix):])
        return "${elsewhere}/" + Path(path).name

    if "/" not in text and "\\" not in text:
        return text
    # the known roots first, wherever they sit (a checkout under /check/... is not under a usual top folder)
    under = _known_roots_pattern(tuple(prefix for prefix, _ in roots if prefix and os.path.isabs(prefix)))
    if under is not None:
        text = under.sub(one, text)
    return ABSOLUTE.sub(one, text)


@functools.lru_cache(maxsize=32)
def _known_roots_pattern(known: tuple[str, ...]) -> re.Pattern | None:
    """One compiled pattern per set of roots (a run rewrites thousands of strings with the same roots)."""
    if not known:
        return None
    return re.compile(r"(?<![\w.$}/:])(?:" + "|".join(re.escape(k) for k in known) + r")(?![\w.-])"
                      r"(?:/[^\s\"',;:)\]]*)?")


def portable(value, roots: list[tuple[str, str]]):
    """A copy of a JSON-like value with every absolute path in its strings rewritten."""
    if isinstance(value, str):
        return portable_text(value, roots)
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, roots) for v in value]
    return value


def audit(value, where: str = "") -> list[str]:
    """'<where>: <path>' for every absolute machine path left in a JSON-like value (empty: path-free)."""
    if isinstance(value, str):
        return [f"{where}: {m.group(0)}" for m in ABSOLUTE.finditer(value)]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in audit(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in audit(v, f"{where}[{i}]")]
    return []


def audit_folder(folder) -> list[str]:
    """Absolute paths in the result files of a results tree (JSON, JSON lines and safetensors headers)."""
    return audit_folder_files(sorted(Path(folder).rglob("*")))


def audit_folder_files(files) -> list[str]:
    """Absolute paths in the given result files (JSON, JSON lines and safetensors headers; others ignored)."""
    from safetensors import safe_open

    hits = []
    for f in map(Path, files):
        if f.suffix == ".json":
            hits += audit(json.loads(f.read_text(encoding="utf-8")), str(f))
        elif f.suffix == ".jsonl":
            hits += [h for line in f.read_text(encoding="utf-8").splitlines() if line.strip()
                     for h in audit(json.loads(line), str(f))]
        elif f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as st:
                hits += audit(st.metadata() or {}, str(f))
    return hits


# ------------------------------------------------------------------------------------------- the run's files
def model_identity(cfg, model) -> dict:
    """The model of a run, the same on every machine: its config name and its weights' fingerprint."""
    from easyedit_kne.cache import model_fingerprint

    return {"name": str(cfg.model.name), "dtype": str(cfg.model.dtype), "sha256": model_fingerprint(model)}


def portable_fingerprint(fingerprint: dict, cfg, out, model, model_path: str) -> dict:
    """run_config.json's fingerprint without machine paths; the model by name + weights fingerprint."""
    roots = run_roots(cfg, out, model_path)
    result = portable(fingerprint, roots)
    result["model"] = model_identity(cfg, model)
    return result


def portable_context(context: dict, cfg, out, model_path: str) -> dict:
    """The summary.json context without machine paths, plus the machine, versions and command of the run.
    The run's ensemble file (written by the method's prepare) gets path-free metadata here too."""
    from .provenance import provenance

    roots = run_roots(cfg, out, model_path)
    keep = {k: context[k] for k in ("case_ids", "started") if k in context}
    result = {**portable({k: v for k, v in context.items() if k not in keep}, roots), **keep}
    result["output_dir"] = display_dir(out)
    result.update(portable(provenance(cfg), roots))
    scrub_ensemble_file(out, cfg, model_path)
    return result


def display_dir(out) -> str:
    """The run's folder as shown in summary.json: relative to the repository (or the current folder), else
    from its last `benchmarks` folder on, else its name."""
    from .config import repo_root

    real = Path(_real(out))
    for base in (repo_root(), Path.cwd()):
        if base is not None:
            try:
                return real.relative_to(Path(_real(base))).as_posix()
            except ValueError:
                continue
    parts = real.parts
    if "benchmarks" in parts:
        return Path(*parts[len(parts) - 1 - parts[::-1].index("benchmarks"):]).as_posix()
    return real.name


def scrub_ensemble_metadata(ensemble, cfg, out, model_path: str) -> None:
    """The ensemble's metadata (hparams.model_name, cache folders) without machine paths (in place)."""
    ensemble.metadata = portable(ensemble.metadata, run_roots(cfg, out, model_path))


def migrate_run_config(out, fingerprint: dict, cfg, model_path: str) -> bool:
    """A run_config.json written before results were portable (absolute paths, the model by path): rewritten
    in the portable form when that form matches this run's `fingerprint`, so the run resumes. True if it was."""
    import hashlib

    from easyedit_kne.atomic import write_json_atomic

    from .case_log import RUN_CONFIG

    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return False
    old = json.loads(path.read_text(encoding="utf-8"))
    if not audit(old.get("config")):
        return False
    config = portable(old.get("config") or {}, run_roots(cfg, out, model_path))
    config["model"] = fingerprint["model"]
    if config != json.loads(json.dumps(fingerprint)):
        return False
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    write_json_atomic(path, {"sha256": digest, "config": fingerprint})
    return True


def scrub_ensemble_file(out, cfg, model_path: str) -> bool:
    """Rewrite the run's ensemble.safetensors with path-free metadata if it has paths (same neurons)."""
    from easyedit_kne.ensemble import KnowledgeNeuronalEnsemble

    from .case_log import ENSEMBLE

    path = Path(out) / ENSEMBLE
    if not path.is_file():
        return False
    ensemble = KnowledgeNeuronalEnsemble.load(path)
    if not audit(ensemble.metadata):
        return False
    scrub_ensemble_metadata(ensemble, cfg, out, model_path)
    ensemble.save(path)
    return True
