"""The runner's loops: single / batch (edit, evaluate, roll back per chunk) and sequential (checkpointed) modes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .case_log import CASES, PRE_CASES, SEQ_STATE, SUMMARY, CaseLog, StopAfter
from .evaluator import finalize_case
from .summary import build_summary


# --------------------------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, cfg, out: Path):
        self.cfg = cfg
        self.out = out
        self.progress = bool(cfg.progress)
        self.stop_after = None if cfg.stop_after is None else int(cfg.stop_after)
        self.written = 0
        self.log = CaseLog(out / CASES)
        self.context: dict = {}

    # -- bookkeeping
    def write_case(self, record: dict) -> None:
        self.log.append(record)
        self.written += 1
        if self.stop_after is not None and self.written >= self.stop_after:
            self.write_summary(partial=True)  # the summary counts every case written, the last one included
            raise StopAfter(f"stop_after={self.stop_after}: stopped after writing {self.written} case(s); "
                            "rerun the same command to resume")

    def _record(self, cid, request, case, edit_info, edit_share, loc_share, eval_s, chunk) -> dict:
        return {"case_id": cid, "chunk": chunk, "request": request, "pre": case["pre"], "post": case["post"],
                "edit": {k: v for k, v in edit_info.items() if k != "seconds"},
                "timing": {"edit_s": round(edit_share, 4), "localization_s": round(loc_share, 4),
                           "eval_s": round(eval_s, 4)}}

    # -- single and batch modes
    def run_chunks(self, method, model, tok, requests, case_ids, chunk_size, evaluate):
        from tqdm.auto import tqdm

        by_id = dict(zip(case_ids, requests, strict=True))
        chunks = [case_ids[i:i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
        todo = [c for c in chunks if any(cid not in self.log.records for cid in c)]
        for chunk in tqdm(todo, desc=f"{method.name} {self.cfg.edit_mode}", disable=not self.progress):
            pending = [cid for cid in chunk if cid not in self.log.records]
            pre = {cid: evaluate(model, tok, by_id[cid], cid, "pre") for cid in pending}
            try:
                result = method.edit(model, tok, [by_id[cid] for cid in chunk])
            except Exception as err:
                if self.cfg.on_error != "record":
                    raise
                for cid in pending:
                    self.write_case({"case_id": cid, "chunk": [chunk[0], chunk[-1]], "request": by_id[cid],
                                     "error": f"{type(err).__name__}: {err}"})
                continue
            loc_s = float(result.info.get("localize_seconds") or 0.0)
            edit_s = max(0.0, result.info["seconds"] - loc_s)
            records = []
            for cid in pending:
                post, post_s = evaluate(result.model, tok, by_id[cid], cid, "post")
                case = finalize_case(pre[cid][0], post, by_id[cid])
                records.append(self._record(cid, by_id[cid], case, result.info, edit_s / len(chunk),
                                            loc_s / len(chunk), pre[cid][1] + post_s, [chunk[0], chunk[-1]]))
            model = result.restore()
            for rec in records:
                self.write_case(rec)
            self.write_summary(partial=True)
        return model

    # -- sequential mode
    def run_sequential(self, method, model, tok, requests, case_ids, chunk_size, evaluate, digest,
                       checkpoints=()):
        """Pre-edit metrics of every case, the chunks edited in turn without roll back, post-edit metrics of every
        case on the model carrying all the edits. `checkpoints` (easyedit_kne/bench/checkpoints.py) are also
        evaluated on their first T cases when the stream has made their edits; the edited weights are saved
        before each checkpoint's evaluation and after the last edit, and a rerun goes on from the last save."""
        from tqdm.auto import tqdm

        by_id = dict(zip(case_ids, requests, strict=True))
        pending = [cid for cid in case_ids if cid not in self.log.records]
        ck_todo = [ck for ck in checkpoints if ck.pending(case_ids)]
        if not pending and not ck_todo:
            return model
        pre_log = CaseLog(self.out / PRE_CASES)
        pre_log.load()
        for cid in tqdm([c for c in case_ids if c not in pre_log.records], desc="pre-edit metrics",
                        disable=not self.progress):
            metrics, seconds = evaluate(model, tok, by_id[cid], cid, "pre")
            pre_log.append({"case_id": cid, "pre": metrics, "eval_s": seconds})
        chunks = [case_ids[i:i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
        state = self.load_sequential_state(model, digest)
        if state is None:
            state = {"edit_seconds": 0.0, "localize_seconds": 0.0, "n_edits": 0, "touched": []}
        touched = set(state.get("touched") or [])
        by_size = {ck.n_items: ck for ck in ck_todo}
        done_items = min(int(state["n_edits"]) * chunk_size, len(case_ids))
        for ck in ck_todo:
            if ck.n_items < done_items:
                warnings.warn(f"checkpoint T={ck.n_items} ({ck.out}) misses cases, but the saved edit stream is "
                              f"past it ({done_items} cases edited): run data.size={ck.n_items} on its own, or "
                              "overwrite=true", stacklevel=2)
        if done_items in by_size:  # killed during this checkpoint's evaluation: finish it first
            self._evaluate_into(by_size[done_items], model, tok, by_id, case_ids, pre_log, state, evaluate)
        for j in tqdm(range(int(state["n_edits"]), len(chunks)), desc=f"{method.name} sequential edits",
                      disable=not self.progress):
            result = method.edit(model, tok, [by_id[cid] for cid in chunks[j]], sequential=True)
            model = result.model
            loc = float(result.info.get("localize_seconds") or 0.0)
            state["localize_seconds"] += loc
            state["edit_seconds"] += max(0.0, result.info["seconds"] - loc)
            state["n_edits"] = j + 1
            last = j + 1 == len(chunks)
            if last:
                model = method.finish_sequential(model)
            ck = by_size.get(min((j + 1) * chunk_size, len(case_ids)))
            if last or ck is not None:
                touched |= method.touched_parameters()
                state["touched"] = sorted(touched)
                self.save_sequential_state(model, touched, digest, state)
            if ck is not None:
                self._evaluate_into(ck, model, tok, by_id, case_ids, pre_log, state, evaluate)
        self._post_cases(self, case_ids, model, tok, by_id, pre_log, state, evaluate, "post-edit metrics")
        return model

    def _evaluate_into(self, ck, model, tok, by_id, case_ids, pre_log, state, evaluate) -> None:
        """Checkpoint `ck`: post-edit metrics of its first T cases on the model after T edited cases."""
        self._post_cases(ck.runner, case_ids[:ck.n_items], model, tok, by_id, pre_log, state, evaluate,
                         f"checkpoint T={ck.n_items}")
        ck.runner.write_summary(partial=False)

    def _post_cases(self, sink, ids, model, tok, by_id, pre_log, state, evaluate, desc) -> None:
        """Post-edit metrics of the cases `ids` that `sink` (this runner or a checkpoint's) has not written, on the
        model after their len(ids) edited cases; the stream's edit time so far is shared out over them."""
        from tqdm.auto import tqdm

        n = len(ids)
        for cid in tqdm([c for c in ids if c not in sink.log.records], desc=desc, disable=not self.progress):
            post, post_s = evaluate(model, tok, by_id[cid], cid, "post")
            pre = pre_log.records[cid]
            case = finalize_case(pre["pre"], post, by_id[cid])
            sink.write_case(self._record(cid, by_id[cid], case, {}, float(state["edit_seconds"]) / n,
                                         float(state["localize_seconds"]) / n, pre["eval_s"] + post_s,
                                         [ids[0], ids[-1]]))
            if len(sink.log.records) % 10 == 0:
                sink.write_summary(partial=True)

    def save_sequential_state(self, model, names, digest, state) -> None:
        from safetensors.torch import save_file

        from easyedit_kne.atomic import atomic_path

        tensors = {n: model.get_parameter(n).detach().cpu().contiguous() for n in sorted(names)}
        meta = {"run_sha256": digest, "state": json.dumps(state)}
        with atomic_path(self.out / SEQ_STATE) as tmp:
            save_file(tensors, tmp, metadata=meta)

    def load_sequential_state(self, model, digest):
        import torch
        from safetensors import safe_open

        path = self.out / SEQ_STATE
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("run_sha256") != digest:
                warnings.warn(f"{path} belongs to another run config; editing again", stacklevel=2)
                return None
            with torch.no_grad():
                for name in f.keys():
                    param = model.get_parameter(name)
                    param.copy_(f.get_tensor(name).to(param.device, param.dtype))
        return json.loads(meta["state"])

    # -- summary
    def write_summary(self, partial: bool) -> dict:
        from easyedit_kne.atomic import write_json_atomic

        summary = build_summary(self.log.records, self.context, complete=not partial)
        write_json_atomic(self.out / SUMMARY, summary)
        return summary
