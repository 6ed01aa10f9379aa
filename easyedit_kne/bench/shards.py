"""Sharded benchmark runs: `data.shard=K/N` runs the K-th of N shards of the evaluated items, and compare merges
the shards of a run back into one.

Layout: the evaluated items [offset, offset + size) are cut into the run's edit chunks (`batch_size` items; 1 in
single mode) and chunk j goes to shard j mod N (interleaved by chunk). Interleaving whole chunks
  * keeps every edit call identical to the unsharded run's (same chunk, same requests), so the merged shards
    hold exactly the unsharded run's cases and numbers, in batch mode too;
  * balances the shards when the cost of an item drifts along the file (KnowEdit files are not shuffled);
  * leaves a shard that was stopped early with items spread over the whole slice, not a prefix.
Sequential mode edits every item into one model, so it cannot be sharded (refused).

Every shard plans KNE's localization from the whole evaluated slice, so all shards localize on the same held-out
items and get the same ensemble. A shard runs in `<run dir>/shard-K-of-N/` (its own cases.jsonl, summary.json,
run_config.json and ensemble; resumable like any run). compare.py groups the shard-K-of-N folders under one
parent into one run: the union of their cases (case ids are indices in the data file), refusing shards whose
configs or ensembles differ, whose case ids overlap, or whose shard counts differ.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

LAYOUT = "interleaved chunks: chunk j of batch_size items goes to shard j mod N"
_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


# ------------------------------------------------------------------------------------------- a shard
def parse_shard(value) -> tuple[int, int] | None:
    """`data.shard` ("K/N", 0 <= K < N) as (K, N); None when unset."""
    if value is None or str(value).strip() in ("", "None", "null"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match:
        raise ValueError(f"data.shard={value!r}: give K/N, the K-th of N shards counted from 0 "
                         "(e.g. data.shard=0/2 and data.shard=1/2), or null for the whole run")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or k >= n:
        raise ValueError(f"data.shard={value!r}: K must be in 0..N-1 and N >= 1 (shards of 2 are "
                         "data.shard=0/2 and data.shard=1/2)")
    return k, n


def shard_dirname(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


def shard_output_dir(out: Path, shard: tuple[int, int] | None) -> Path:
    """The shard's own folder under the run's output dir (not doubled when `out` is that folder already)."""
    if shard is None or out.name == shard_dirname(shard):
        return out
    return out / shard_dirname(shard)


def _subdir(base, shard) -> str:
    """OmegaConf resolver kne_shard_dir: `base`/shard-K-of-N when data.shard is set, else `base`."""
    parsed = parse_shard(shard)
    base = "" if base is None else str(base)
    if parsed is None:
        return base
    return f"{base}/{shard_dirname(parsed)}" if base else shard_dirname(parsed)


def register_resolver() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("kne_shard_dir", _subdir, replace=True)


def select_shard(case_ids: list[int], chunk_size: int, shard: tuple[int, int]) -> list[int]:
    """The case ids of shard K of N: whole chunks of `chunk_size`, chunk j to shard j mod N."""
    k, n = shard
    chunks = [case_ids[i:i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
    picked = [cid for j, chunk in enumerate(chunks) if j % n == k for cid in chunk]
    if not picked:
        raise ValueError(f"data.shard={k}/{n}: this shard holds no item ({len(case_ids)} items make "
                         f"{len(chunks)} chunk(s) of batch_size {chunk_size}); use at most {len(chunks)} shards")
    return picked


def shard_info(shard: tuple[int, int], case_ids: list[int], all_ids: list[int]) -> dict:
    """What summary.json records of a shard (compare merges on it)."""
    return {"index": shard[0], "count": shard[1], "layout": LAYOUT, "case_ids": list(case_ids),
            "n_total": len(all_ids), "all_case_ids": [all_ids[0], all_ids[-1] + 1]}


# ------------------------------------------------------------------------------------------- merging
def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} vs {b!r}"]


def read_run_config(path: Path) -> dict:
    """The "config" of a run folder's run_config.json ({} when it has none or it cannot be read)."""
    try:
        return json.loads((path / "run_config.json").read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError):
        return {}


def _ensemble_digest(path: Path) -> str | None:
    """sha256 of an ensemble's tensors (its metadata holds timings, which differ between shards)."""
    from .case_log import ENSEMBLE

    file = path / ENSEMBLE
    if not file.is_file():
        return None
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(file), framework="numpy") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name)
            h.update(f"{name}:{t.dtype}:{t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()


def _check_group(parent: Path, members: list[dict]) -> None:
    shards = {m["path"]: m["summary"]["shard"] for m in members}
    counts = sorted({s["count"] for s in shards.values()})
    where = f"{parent}: the shard folders"
    if len(counts) > 1:
        raise ValueError(f"{where} mix shard counts {counts}: keep the shards of one data.shard=K/N split per "
                         "run folder (move the others out)")
    seen: dict[int, str] = {}
    for path, s in shards.items():
        if s["index"] in seen:
            raise ValueError(f"{where} {seen[s['index']]} and {path} are both shard {s['index']}/{s['count']}")
        seen[s["index"]] = path
    ref = members[0]
    for m in members[1:]:
        if m["summary"].get("run_config_sha256") != ref["summary"].get("run_config_sha256"):
            changes = _diff(ref.get("config") or read_run_config(Path(ref["path"])),
                            m.get("config") or read_run_config(Path(m["path"])))
            raise ValueError(
                f"{where} {Path(ref['path']).name} and {Path(m['path']).name} were run with different configs "
                f"({'; '.join(changes[:8]) or 'see their run_config.json'}): rerun the odd shard with the same "
                "overrides into its own folder, or move it out before comparing")
    owner: dict[int, str] = {}
    for m in members:
        ids = set(m["summary"]["shard"]["case_ids"]) | set(m["cases"])
        for cid in sorted(ids):
            if cid in owner:
                raise ValueError(f"{where} {owner[cid]} and {Path(m['path']).name} overlap (case id {cid}): "
                                 "shards of one run must hold disjoint items; remove the stray folder")
            owner[cid] = Path(m["path"]).name
    digests = {Path(m["path"]).name: _ensemble_digest(Path(m["path"])) for m in members}
    if len({d for d in digests.values() if d is not None}) > 1:
        raise ValueError(f"{where} localized different KNE ensembles ({', '.join(digests)}): their numbers do "
                         "not come from one run; rerun the shards on the same device and versions")


def merge_group(parent: Path, members: list[dict]) -> dict:
    """One compare run from the shard runs under `parent` (each with "summary", "path" and "cases")."""
    import os
    import time

    from .summary import build_summary

    members = sorted(members, key=lambda m: m["summary"]["shard"]["index"])
    _check_group(parent, members)
    first = members[0]["summary"]
    count = first["shard"]["count"]
    records = {cid: rec for m in members for cid, rec in m["cases"].items()}
    all_ids = list(range(*first["shard"]["all_case_ids"]))
    computed = set(build_summary({}, {"case_ids": [], "started": 0.0}, False))
    context = {k: v for k, v in first.items() if k not in computed and k not in ("shard", "output_dir")}
    loc = [float((m["summary"].get("localization") or {}).get("seconds") or 0.0) for m in members]
    edited = (first.get("localization") or {}).get("split") == "edited"
    context.update(case_ids=all_ids, started=time.perf_counter(), localization_seconds=0.0 if edited else max(loc),
                   prepare_seconds=max(float(m["summary"]["timings"].get("prepare_s") or 0.0) for m in members),
                   output_dir=str(parent))
    complete = len(members) == count and all(m["summary"].get("complete") for m in members)
    merged = build_summary(records, context, complete)
    merged["timings"].pop("wall_s_this_invocation", None)
    merged["shards"] = {"count": count, "layout": first["shard"]["layout"],
                        "present": [m["summary"]["shard"]["index"] for m in members],
                        "runs": [{"index": m["summary"]["shard"]["index"], "path": m["path"],
                                  "n_cases": m["summary"].get("n_cases"), "complete": m["summary"].get("complete"),
                                  "timings": m["summary"].get("timings")} for m in members]}
    return {"summary": merged, "path": str(parent), "rel": os.path.dirname(members[0]["rel"]), "cases": records,
            "config": members[0].get("config") or {}}


def merge_shard_runs(runs: list[dict]) -> list[dict]:
    """compare's hook: the runs of find_summaries with the shard runs of each run folder merged into one
    (non-shard runs pass through unchanged). A merged run carries its case records under "cases"."""
    from .case_log import CASES, parse_case_lines

    groups: dict[Path, list[dict]] = {}
    out = []
    for r in runs:
        shard = r["summary"].get("shard")
        if not shard:
            out.append(r)
            continue
        path = Path(r["path"])
        if not _DIR.match(path.name):
            raise ValueError(f"{path}: a shard run must sit in a shard-K-of-N folder (its summary says shard "
                             f"{shard.get('index')}/{shard.get('count')}); move it back")
        file = path / CASES
        cases = parse_case_lines(file.read_bytes(), file)[0] if file.is_file() else {}
        groups.setdefault(path.parent, []).append(dict(r, cases=cases))
    for parent, members in groups.items():
        out.append(merge_group(parent, members))
    return out
