"""Where a run's numbers come from, as summary.json records them: the package versions, the machine and the
command (Hydra's overrides). The docs generator (docs_table.py) prints them beside the table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def _git_commit(folder) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict:
    """Python and the packages that change the numbers (None: not installed); EasyEdit's commit if imported."""
    import easyedit_kne

    from .config import repo_root

    out = {"python": platform.python_version(), "easyedit_kne": easyedit_kne.__version__}
    root = repo_root()
    if root is not None:
        out["easyedit_kne_commit"] = _git_commit(root)
    for name in ("torch", "transformers", "peft", "numpy", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    if "easyeditor" in sys.modules:
        folder = Path(sys.modules["easyeditor"].__file__).resolve().parent.parent
        out["easyeditor"] = _git_commit(folder) or "a checkout without git metadata"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """The machine in words: OS, CPU, cores, torch threads and the accelerator the run used."""
    import torch

    info = {"system": f"{platform.system()} {platform.machine()}", "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name(torch.device(str(device)))
    return info


def command() -> str | None:
    """The command line of a Hydra run (`easyedit-kne knowedit <overrides>`); None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        task = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return None
    return " ".join(["easyedit-kne knowedit", *task])


def provenance(cfg) -> dict:
    return {"versions": versions(), "machine": machine(str(cfg.device)), "command": command()}
