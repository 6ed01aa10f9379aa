"""summary.json of a run: the KnowEdit table numbers (x100), case counts and timings; its one-line print."""

from __future__ import annotations

import time


def build_summary(records: dict, context: dict, complete: bool) -> dict:
    from easyedit_kne.evaluate import summarize, table_numbers

    expected = context["case_ids"]
    done = [records[c] for c in expected if c in records]
    ok = [r for r in done if "error" not in r]
    cases = [{"pre": r["pre"], "post": r["post"]} for r in ok]
    post = summarize(cases) if cases else {}
    pre = summarize(cases, phase="pre") if cases else {}
    loc_s = float(context.get("localization_seconds") or 0.0) + sum(r["timing"]["localization_s"] for r in ok)
    timings = {
        "localization_s": round(loc_s, 3),
        "edit_s": round(sum(r["timing"]["edit_s"] for r in ok), 3),
        "evaluation_s": round(sum(r["timing"]["eval_s"] for r in ok), 3),
        "prepare_s": context.get("prepare_seconds"),
        "wall_s_this_invocation": round(time.perf_counter() - context["started"], 3),
    }
    if ok:
        timings["edit_s_per_case"] = round(timings["edit_s"] / len(ok), 4)
        timings["evaluation_s_per_case"] = round(timings["evaluation_s"] / len(ok), 4)
    summary = {
        **table_numbers(post),
        "n_cases": len(ok),
        "n_expected": len(expected),
        "n_errors": len(done) - len(ok),
        "complete": bool(complete and len(done) == len(expected)),
        "timings": timings,
        "pre_edit": table_numbers(pre),
        "by_key": {"Portability": post.get("Portability_by_key"), "Locality": post.get("Locality_by_key"),
                   "Exact_Match_Rephrase": post.get("Exact_Match_Rephrase"),
                   "Exact_Match_Portability": post.get("Exact_Match_Portability")},
        **{k: v for k, v in context.items() if k not in ("case_ids", "started", "localization_seconds",
                                                       "prepare_seconds")},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return summary


def format_summary(s: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    t = s["timings"]
    return (f"{s['method']} on {s['data']['type']} ({s['n_cases']}/{s['n_expected']} cases, {s['edit_mode']}"
            f", bs {s['batch_size']}): Edit Succ. {f(s['Edit Succ.'])}, Portability {f(s['Portability'])}, "
            f"Locality {f(s['Locality'])}, Fluency {f(s['Fluency'])}, Exact Match {f(s['Exact Match'])}; "
            f"localization {t['localization_s']:.1f}s, edit {t['edit_s']:.1f}s, evaluation {t['evaluation_s']:.1f}s"
            f" -> {s['output_dir']}")
