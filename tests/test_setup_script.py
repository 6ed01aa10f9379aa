"""scripts/setup_easyedit_env.sh stays in step with setup.cfg (no EasyEdit needed): it installs the package
--no-deps, so step 5 must install every requirement of the package and of its `test` extra."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "setup_easyedit_env.sh"


def _setup_cfg_requirements() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["test"].splitlines()
    return {re.sub(r"\s+", "", line) for line in lines if line.strip()}


def test_script_installs_every_requirement_of_setup_cfg():
    proc = subprocess.run(["bash", str(SCRIPT), "--print-requirements"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    printed = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    required = _setup_cfg_requirements()
    assert {"gguf>=0.10", "peft>=0.13", "hydra-core>=1.3"} <= required  # the parse above reads setup.cfg
    assert printed == required


def test_step_5_installs_the_printed_list_and_pip_check_follows():
    text = SCRIPT.read_text(encoding="utf-8")
    step5 = text.split('step "5/6')[1].split('step "6/6')[0]
    assert 'kne_requirements "$PY"' in step5 and 'install "${KNE_REQUIREMENTS[@]}"' in step5
    assert step5.rstrip().endswith('"$PY" -m pip check')
    assert '--print-requirements' in text and 'kne_requirements "${PYTHON:-python3}"' in text
