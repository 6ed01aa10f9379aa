#!/usr/bin/env bash
# GPU readiness check for easyedit-kne, for a machine with a CUDA device; a few minutes on one GPU.
#
#   bash scripts/gpu_check.sh            # outputs under $OUT when set, else ./gpu-check/
#
# Steps (in this order, each under its own time limit):
#   env    torch / CUDA / device facts and the Python packages found            -> env.txt
#   tests  pytest -m gpu on the files that hold GPU tests (tiny models, bf16/fp16 on cuda) -> pytest-gpu.xml
#   edit   SmolLM2-135M in bf16 on cuda: 8 counterfactual edits (easyedit_kne.demo.EDITS) with the shipped
#          hparams; passes when the edit holds on the merged bf16 weights (EditStats.edit_holds, merged_accuracy)
#                                                                               -> smollm2-bf16-edit.json
#   bench  easyedit-kne bench-speed --device cuda --dtype bf16: the localization ratio (fast path vs naive
#          Eq. 5), throughput, the training step and the edit times           -> performance-cuda-bf16.md
# Everything is logged to gpu_check.log and summed up in summary.txt.
#
# Nothing is installed from the internet: the script uses the Python it finds ($PYTHON, else .venv/bin/python
# when it has torch, else python3) with the packages already there; downloads are switched off (HF offline,
# PIP_NO_INDEX, SmolLM2 built only from a local GGUF). A GPU image usually has torch, transformers, peft,
# safetensors, pyyaml, numpy, tqdm, tokenizers and pytest; the `edit` and `bench` steps also need `gguf` to
# build SmolLM2's folder from its GGUF (or KNE_GPU_MODEL, a ready HF folder). Missing pure-Python packages can
# be brought as wheels: KNE_WHEELS=/dir/of/wheels is installed with pip --no-index into a temporary folder.
#
# Inputs (environment): KNE_GPU_MODEL (HF folder; default: SmolLM2 from $EASYEDIT_KNE_SHARED or ../shared),
# KNE_GPU_DATA (a ZsRE KnowEdit JSON for the bench; default: <knowedit dir>/zsre/ZsRE-test-all.json),
# GPU_CHECK_STEPS (default "tests edit bench"), GPU_CHECK_QUICK=1 (bench --quick), GPU_CHECK_DEVICE (default
# cuda; cpu runs the steps on the CPU, only to check this script on a machine without a GPU), GPU_CHECK_DTYPE
# (default bf16: the dtype of the edit and the bench), GPU_CHECK_TIMEOUT (seconds per step, default 300 for
# tests and edit, 420 for bench; a CPU check of the script needs more).
#
# Exit codes: 0 every step ran and passed | 1 a step failed | 2 no Python with torch | 3 no step failed but some
# were skipped (model, data or a package missing: see summary.txt) | 77 no CUDA device: nothing was run
# (77 is the usual "skipped" code of test harnesses).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
OUT_DIR=${OUT:-$REPO/gpu-check}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
SUMMARY=$OUT_DIR/summary.txt
: >"$LOG"
: >"$SUMMARY"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DTYPE=${GPU_CHECK_DTYPE:-bf16}
STEPS=${GPU_CHECK_STEPS:-tests edit bench}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PIP_NO_INDEX=1 KNE_TEST_THREADS=${KNE_TEST_THREADS:-0}
FAILED=0
SKIPPED=0

say() { echo "[gpu_check] $*" | tee -a "$LOG"; }
result() { echo "$1: $2" >>"$SUMMARY"; say "$1: $2"; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    result env "FAILED: $PY cannot import torch (set PYTHON=/path/to/python with torch)"
    exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    result env "no CUDA device: torch $("$PY" -c 'import torch; print(torch.__version__)') sees none; nothing was run (exit 77)"
    exit 77
fi

if [ -n "${KNE_WHEELS:-}" ]; then
    SITE=$(mktemp -d)
    say "installing the local wheels of $KNE_WHEELS into $SITE (--no-index)"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KNE_WHEELS"/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$SITE"
    else
        say "warning: the wheels of $KNE_WHEELS did not install (see above)"
    fi
fi

# ------------------------------------------------------------------------------------------------ env
"$PY" - "$DEVICE" >"$OUT_DIR/env.txt" 2>>"$LOG" <<'EOF'
import importlib, platform, sys
import torch
device = sys.argv[1]
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}")
if device == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print(f"device: {device} (GPU_CHECK_DEVICE; not a GPU check)")
for name in ("transformers", "peft", "safetensors", "yaml", "numpy", "tqdm", "tokenizers", "pytest", "hypothesis",
             "gguf", "hydra", "omegaconf", "psutil", "scipy"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        print(f"{name} MISSING ({type(err).__name__})")
EOF
cat "$OUT_DIR/env.txt" | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1

# ------------------------------------------------------------------------------------------------ tests
if has_step tests; then
    mapfile -t FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
    say "pytest -m gpu ${FILES[*]}"
    KNE_GPU_TEST_DEVICE=$DEVICE timeout "${GPU_CHECK_TIMEOUT:-300}" "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider \
        --junitxml="$OUT_DIR/pytest-gpu.xml" "${FILES[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then result tests passed; else result tests "FAILED (pytest exit $rc)"; FAILED=1; fi
fi

# ------------------------------------------------------------------------------------------------ model
MODEL=${KNE_GPU_MODEL:-}
if { has_step edit || has_step bench; } && [ -z "$MODEL" ]; then
    MODEL=$("$PY" - 2>>"$LOG" <<'EOF'
from easyedit_kne.models import find_shared_gguf, smollm2_hf_dir
try:
    print(smollm2_hf_dir(allow_download=False))
except Exception as err:  # noqa: BLE001
    import sys
    print(f"SmolLM2: {type(err).__name__}: {err} (found GGUF: {find_shared_gguf()})", file=sys.stderr)
EOF
)
    [ -z "$MODEL" ] && say "no SmolLM2 folder: set EASYEDIT_KNE_SHARED to the shared/ folder (and have gguf installed) or KNE_GPU_MODEL to a HF folder"
fi

# ------------------------------------------------------------------------------------------------ edit
if has_step edit; then
    if [ -z "$MODEL" ]; then
        result edit "SKIPPED: no model (see above)"; SKIPPED=1
    else
        say "SmolLM2 $DTYPE edit on $DEVICE ($MODEL)"
        timeout "${GPU_CHECK_TIMEOUT:-300}" "$PY" - "$MODEL" "$DEVICE" "$DTYPE" "$OUT_DIR/smollm2-$DTYPE-edit.json" 2>&1 <<'EOF' | tee -a "$LOG"
import json, sys, time
import torch
from easyedit_kne import EditStats, KNEHyperParams, apply_kne_to_model
from easyedit_kne.demo import EDITS, UNRELATED, edit_success
from easyedit_kne.models import load_model
from easyedit_kne.hparams import hparams_root

model_dir, device, dtype, out = sys.argv[1:5]
model, tok = load_model(model_dir, device=device, dtype=dtype)

def greedy(prompt):
    enc = tok(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

hp = KNEHyperParams.from_hparams(f"{hparams_root()}/KNE/smollm2-135m-batch.yaml")
before = [greedy(p) for p in UNRELATED]
pre = sum(edit_success(model, tok, hp.max_length)) / len(EDITS)
stats = EditStats()
if device == "cuda":
    torch.cuda.synchronize()
start = time.perf_counter()
apply_kne_to_model(model, tok, [{"prompt": p, "target_new": n, "ground_truth": o, "subject": s}
                                 for p, n, o, s in EDITS], hp, stats=stats)
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
post = sum(edit_success(model, tok, hp.max_length)) / len(EDITS)
kept = sum(greedy(p) == b for p, b in zip(UNRELATED, before)) / len(UNRELATED)
result = {"model": model_dir, "device": device, "dtype": str(model.dtype), "edits": len(EDITS),
          "edit_success_before": pre, "edit_success_after": post, "unrelated_kept": kept,
          "edit_holds": stats.edit_holds, "trained_holds": stats.trained_holds,
          "merged_accuracy": stats.merged_accuracy, "merged_min_prob": stats.merged_min_prob,
          "merged_loss": stats.merged_loss, "repair_rounds": stats.repair_rounds, "steps": stats.steps,
          "num_neurons": stats.num_neurons, "seconds": round(seconds, 3),
          "localize_seconds": round(stats.localize_seconds, 3), "train_seconds": round(stats.train_seconds, 3),
          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None}
with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result))
ok = stats.edit_holds is True and stats.merged_accuracy == 1.0
print("edit holds after the merge" if ok else "THE EDIT DOES NOT HOLD after the merge")
sys.exit(0 if ok else 1)
EOF
        rc=${PIPESTATUS[0]}
        if [ "$rc" -eq 0 ]; then result edit "passed (edit_holds, merged_accuracy 1.0; smollm2-$DTYPE-edit.json)"
        else result edit "FAILED (exit $rc)"; FAILED=1; fi
    fi
fi

# ------------------------------------------------------------------------------------------------ bench
if has_step bench; then
    DATA=${KNE_GPU_DATA:-$("$PY" -c "from easyedit_kne.bench.config import default_knowedit_dir as d; print(d() / 'zsre' / 'ZsRE-test-all.json')" 2>>"$LOG")}
    if [ -z "$MODEL" ]; then
        result bench "SKIPPED: no model (see above)"; SKIPPED=1
    elif [ ! -f "$DATA" ]; then
        result bench "SKIPPED: no ZsRE file at '$DATA' (set KNE_GPU_DATA or KNOWEDIT_DIR)"; SKIPPED=1
    else
        QUICK=()
        [ "${GPU_CHECK_QUICK:-0}" = 1 ] && QUICK=(--quick)
        say "bench-speed --device $DEVICE --dtype $DTYPE ${QUICK[*]}"
        timeout "${GPU_CHECK_TIMEOUT:-420}" "$PY" -m easyedit_kne bench-speed --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" \
            --data "$DATA" --out "$OUT_DIR/performance-$DEVICE-$DTYPE.md" --no-progress "${QUICK[@]}" 2>&1 | tee -a "$LOG"
        rc=${PIPESTATUS[0]}
        if [ "$rc" -eq 0 ]; then result bench "passed (performance-$DEVICE-$DTYPE.md)"
        else result bench "FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"; FAILED=1; fi
    fi
fi

say "outputs in $OUT_DIR"
if [ "$FAILED" -ne 0 ]; then exit 1; fi
if [ "$SKIPPED" -ne 0 ]; then exit 3; fi
exit 0
