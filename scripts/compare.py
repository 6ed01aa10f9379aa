"""Compare KnowEdit runs: a thin entry point for easyedit_kne/bench/compare.py (installed: `easyedit-kne compare`).

    python scripts/compare.py RESULTS_DIR [RESULTS_DIR ...] [--out-prefix PREFIX] [--common]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package first

from easyedit_kne.bench.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
