"""The speed and memory bench of KNE's localization and editing (`easyedit-kne bench-speed`).

measure.py (configuration, machine, timing, peak memory), localization.py, editing.py (training step, whole
edits), report.py (Markdown), suite.py (a whole suite on one model, and the command line). The names below are
the ones tests and scripts use.
"""

from .editing import edit_times, training_step_times  # noqa: F401
from .localization import (  # noqa: F401
    localization_memory,
    localization_scaling,
    localization_speed,
    localization_throughput,
    target_layers,
)
from .measure import QUICK, BenchConfig, evenly_spaced  # noqa: F401
from .report import render, write_atomic  # noqa: F401
from .suite import Suite, main, run_suite  # noqa: F401
