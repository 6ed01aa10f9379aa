"""The runner's result files: their names, and cases.jsonl (one JSON line per case, appended with fsync; a
truncated last line of a killed run is cut off when it is read again)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

CASES = "cases.jsonl"
PRE_CASES = "pre.jsonl"
SUMMARY = "summary.json"
RUN_CONFIG = "run_config.json"
ENSEMBLE = "ensemble.safetensors"
SEQ_STATE = "sequential_state.safetensors"
RESULT_FILES = (CASES, PRE_CASES, SUMMARY, RUN_CONFIG, ENSEMBLE, SEQ_STATE, "easyedit.log")


class StopAfter(RuntimeError):
    """Raised by `stop_after`: the run stops on purpose (to exercise resuming)."""


# ------------------------------------------------------------------------------------------ results file
def parse_case_lines(data: bytes, path) -> tuple[dict[int, dict], int, int]:
    """Case records of a cases.jsonl's bytes: ({case_id: the first record of that id}, the byte offset where
    the good lines end, the number of duplicate ids). An unparsable last line (a write cut short) ends the
    good part; an unparsable line anywhere else raises (the file is damaged, not truncated)."""
    records: dict[int, dict] = {}
    offset, good_end, duplicates = 0, 0, 0
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        end = offset + len(raw)
        if raw.strip():
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or "case_id" not in rec:
                    raise ValueError("not a case record")
            except ValueError as err:
                if end == len(data):  # the last line: a write cut short
                    break
                raise ValueError(f"{path}: line {lineno} is not a case record ({err}); the file is "
                                 "damaged (not just truncated): fix or delete it") from None
            cid = int(rec["case_id"])
            if cid in records:
                duplicates += 1
            else:
                records[cid] = rec
        offset = good_end = end
    return records, good_end, duplicates


class CaseLog:
    """An append-only JSON-lines file of finished cases, keyed by "case_id", that survives being killed.

    `load()` reads it; an incomplete last line (a run killed while writing) is cut off, so the next append
    starts on a fresh line, while a bad line anywhere else is an error (the file is damaged, not truncated).
    `append()` writes one line and flushes and fsyncs it before returning.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[int, dict] = {}
        self.dropped_tail = 0
        self.duplicates = 0

    def load(self) -> dict[int, dict]:
        self.records = {}
        if not self.path.exists():
            return self.records
        data = self.path.read_bytes()
        self.records, good_end, self.duplicates = parse_case_lines(data, self.path)
        if good_end < len(data) or (good_end and not data[:good_end].endswith(b"\n")):
            self.dropped_tail = len(data) - good_end
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                if good_end and not data[:good_end].endswith(b"\n"):
                    f.seek(good_end)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        if self.duplicates:
            warnings.warn(f"{self.path}: {self.duplicates} duplicate case line(s); the first of each is used",
                          stacklevel=2)
        return self.records

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[int(record["case_id"])] = record
