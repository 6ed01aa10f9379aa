"""KnowEdit benchmark runner: a thin entry point; the runner is easyedit_kne/bench/run_knowedit.py and its Hydra
configs easyedit_kne/bench/conf/ (installed: `easyedit-kne knowedit ...`, the same overrides).

    python scripts/run_knowedit.py method=KNE model=smollm2-135m data=zsre data.size=8 output_dir=DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package first

from easyedit_kne.bench.run_knowedit import main  # noqa: E402

if __name__ == "__main__":
    main()
