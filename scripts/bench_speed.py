"""Speed and memory bench: a thin entry point for easyedit_kne/bench/speed/ (installed: `easyedit-kne bench-speed`).

    python scripts/bench_speed.py                      # full run -> docs/performance.md
    python scripts/bench_speed.py --quick --out /tmp/perf.md
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package first

from easyedit_kne.bench.speed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
