#!/usr/bin/env bash
# Build a virtual environment in which a real EasyEdit (github.com/zjunlp/EasyEdit) and easyedit_kne run
# together, for tests/test_easyedit_real.py and for using KNE through EasyEdit's BaseEditor.
#
# EasyEdit is not vendored here and is not on PyPI; get a checkout first:
#     git clone https://github.com/zjunlp/EasyEdit /path/to/EasyEdit
# then:
#     scripts/setup_easyedit_env.sh /path/to/EasyEdit [VENV_DIR]
#     scripts/setup_easyedit_env.sh --print-requirements   # what step 5 installs (read from setup.cfg)
#     EASYEDIT_PATH=/path/to/EasyEdit VENV_DIR/bin/python -m pytest tests/test_easyedit_real.py
#
# Arguments:  EASYEDIT_DIR  the EasyEdit checkout (the folder that contains easyeditor/ and requirements.txt)
#             VENV_DIR      where to create the venv (default: ./ee-venv); reused when it already exists
# Environment: PYTHON        interpreter for the venv (default: python3.11; EasyEdit targets 3.10/3.11)
#             TORCH_SPEC    torch pin (default: torch==2.13.0 torchvision==0.28.0)
#             PIP_ISOLATED  1 (default): run pip with --isolated, i.e. ignore pip config files and PIP_*
#                           variables. A pip config that adds an extra index of CPU-only torch wheels
#                           would otherwise pick a torch without a matching torchvision (which EasyEdit
#                           imports, via timm). Set to 0 if you need your pip config (proxy, mirror).
#
# What it does (timings on a 2-core CPU machine, fresh venv): venv + pip upgrade ~10 s; torch+torchvision
# (CUDA builds, ~5 GB, they also run on CPU) ~2 min; EasyEdit's requirements.txt without its torch and
# torchvision pins ~2.5 min; easyedit_kne editable + its requirements + test tools ~15 s.
# `from easyeditor import BaseEditor` then takes 25-40 s (EasyEdit imports every method and its dependencies at package import).
#
# Pin conflicts relaxed: EasyEdit's requirements.txt pins torch (e.g. torch==2.9.1) and may pin
# torchvision; those lines are dropped and TORCH_SPEC is used instead. Every other pin is installed as
# written (transformers, peft, tokenizers, numpy, ... satisfy easyedit_kne's own ranges), and `pip check`
# must pass at the end. easyedit_kne itself is installed --no-deps (so that pip never swaps EasyEdit's pins or
# torch), then step 5 installs every entry of setup.cfg's install_requires and `test` extra, read from
# setup.cfg at run time (already satisfied ones are no-ops): the script cannot fall behind setup.cfg.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# setup.cfg's install_requires and its `test` extra, one requirement a line
kne_requirements() {
    "$1" - "$REPO_DIR/setup.cfg" <<'EOF'
import configparser
import sys

cfg = configparser.ConfigParser()
if not cfg.read(sys.argv[1]):
    sys.exit(f"cannot read {sys.argv[1]}")
lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["test"].splitlines()
for line in lines:
    line = line.split("#", 1)[0].strip()
    if line:
        print(line)
EOF
}

if [[ "${1:-}" == "--print-requirements" ]]; then
    kne_requirements "${PYTHON:-python3}"
    exit 0
fi

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi

EASYEDIT_DIR=$(cd "$1" && pwd)
VENV_DIR=${2:-ee-venv}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}

if [[ ! -f "$EASYEDIT_DIR/easyeditor/__init__.py" || ! -f "$EASYEDIT_DIR/requirements.txt" ]]; then
    echo "error: $EASYEDIT_DIR is not an EasyEdit checkout (no easyeditor/ or requirements.txt)." >&2
    echo "       git clone https://github.com/zjunlp/EasyEdit and pass its path." >&2
    exit 2
fi

PIP_FLAGS=()
if [[ "${PIP_ISOLATED:-1}" == "1" ]]; then
    PIP_FLAGS+=(--isolated)
fi

step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "1/6 venv at $VENV_DIR ($PYTHON)"
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
PY="$VENV_DIR/bin/python"
"$PY" -m pip "${PIP_FLAGS[@]}" install -q --upgrade pip

step "2/6 torch: $TORCH_SPEC"
# shellcheck disable=SC2086  # TORCH_SPEC is a list of requirement specs
"$PY" -m pip "${PIP_FLAGS[@]}" install $TORCH_SPEC

step "3/6 EasyEdit requirements (without its torch/torchvision pins)"
REQS=$(mktemp)
trap 'rm -f "$REQS"' EXIT
grep -viE '^[[:space:]]*(torch|torchvision)[[:space:]]*([=<>!~;].*)?$' "$EASYEDIT_DIR/requirements.txt" >"$REQS"
echo "dropped from requirements.txt:"
grep -iE '^[[:space:]]*(torch|torchvision)[[:space:]]*([=<>!~;].*)?$' "$EASYEDIT_DIR/requirements.txt" \
    | sed 's/^/    /' || true
"$PY" -m pip "${PIP_FLAGS[@]}" install -r "$REQS"

step "4/6 easyedit_kne (editable, no deps) from $REPO_DIR"
"$PY" -m pip "${PIP_FLAGS[@]}" install -e "$REPO_DIR" --no-deps

step "5/6 easyedit_kne's requirements and test tools, from setup.cfg (no-ops where EasyEdit's pins satisfy them)"
mapfile -t KNE_REQUIREMENTS < <(kne_requirements "$PY")
printf '    %s\n' "${KNE_REQUIREMENTS[@]}"
"$PY" -m pip "${PIP_FLAGS[@]}" install "${KNE_REQUIREMENTS[@]}"
"$PY" -m pip check

step "6/6 smoke test: from easyeditor import BaseEditor (takes ~30 s)"
(cd "$REPO_DIR" && EASYEDIT_PATH="$EASYEDIT_DIR" "$PY" - <<'EOF'
import os, sys
sys.path.insert(0, os.environ["EASYEDIT_PATH"])
import torch, transformers
from easyeditor import BaseEditor  # noqa: F401
import easyedit_kne.easyedit  # noqa: F401
print(f"ok: easyeditor from {os.environ['EASYEDIT_PATH']}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF
)

echo
echo "Done. Run the EasyEdit integration tests with:"
echo "    EASYEDIT_PATH=$EASYEDIT_DIR $VENV_DIR/bin/python -m pytest $REPO_DIR/tests/test_easyedit_real.py"
