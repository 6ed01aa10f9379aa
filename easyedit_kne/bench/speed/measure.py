"""Speed bench: its configuration, machine description, timing and peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass

import torch

from ...hparams import KNEHyperParams
from ..provenance import cpu_model

MB = 1024 ** 2


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    target_suffix: str = "mlp.down_proj"
    n_modules: int = 30  # target modules (evenly spaced layers; all layers when the model has this many)
    ig_steps: int = 20
    ig_batch_size: int = KNEHyperParams.__dataclass_fields__["ig_batch_size"].default  # the shipped default
    naive_modules: int | None = None  # None: time the naive path on every module (no extrapolation)
    max_length: int = 40
    throughput_items: int = 5
    steps_sweep: tuple = (5, 10, 20, 40)
    modules_sweep: tuple = (5, 10, 20, 30)
    memory_suffixes: tuple = ("mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj")
    memory_naive: bool = True  # also the naive path's memory for each module type
    ig_batch_sweep: tuple = (16, 32, 64, 128)
    p: float = 1.0  # percent of neurons in the ensemble
    alpha: float = 1.0
    kne_lr: float = 5e-2
    train_batch: int = 8
    warmup_steps: int = 2
    timed_steps: int = 5
    edit_steps: int = 25
    edit_requests: int = 3
    ftl_lr: float = 5e-4  # EasyEdit's FT-L default for Llama
    lora_lr: float = 5e-3  # EasyEdit's LoRA default
    lora_rank: int = 8
    lora_alpha: int = 32
    targets_items: int = 20  # §0 (b): requests timed for items/s
    targets_sweep_items: int = 8  # §0: requests of the ig_request_batch sweep
    sections: str = "all"  # "targets": §0 only
    progress: bool = True

    @property
    def n_items(self) -> int:
        """Requests needed: localization items, then the (disjoint) training/edit items; §0 uses the first
        targets_items."""
        others = 0 if self.sections == "targets" else self.throughput_items + max(self.train_batch,
                                                                                   self.edit_requests)
        return max(self.targets_items, others)


QUICK = dict(n_modules=6, ig_steps=5, naive_modules=2, throughput_items=2, steps_sweep=(2, 5),
             modules_sweep=(2, 6), ig_batch_sweep=(8, 32), train_batch=4, warmup_steps=1, timed_steps=3,
             edit_steps=3, edit_requests=1, targets_items=3, targets_sweep_items=2)


# --------------------------------------------------------------------------------------------------------
# Machine, timing and memory
# --------------------------------------------------------------------------------------------------------

def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1/5/15 min; {os.cpu_count()} CPUs)"
    except OSError:
        return "n/a"


def machine_info(device: str, dtype: torch.dtype) -> dict:
    import transformers

    info = {
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()})",
        "torch threads": str(torch.get_num_threads()),
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
                    f"transformers {transformers.__version__}",
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
    }
    if torch.device(device).type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(torch.device(device))
    return info


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, fn()) with the device synchronized around the call."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _status_bytes(name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (VmHWM); Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS, so that reusing them shows up as RSS growth again."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _RssSampler(threading.Thread):
    """Fallback where VmHWM cannot be reset: sample the RSS every few ms (may miss short peaks)."""

    def __init__(self):
        super().__init__(daemon=True)
        try:
            import psutil

            proc = psutil.Process()
            self.read = lambda: proc.memory_info().rss
        except ImportError:
            self.read = lambda: _status_bytes("VmRSS") or 0
        self.peak = self.read()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.read())


class PeakMemory:
    """Peak memory growth during the block: CUDA allocated bytes on a GPU, process RSS on the CPU.

    On Linux the RSS peak is exact: VmHWM is a process-wide high-water mark, so it is reset (through
    /proc/self/clear_refs) on entry, after freeing what Python and malloc hold; elsewhere a thread samples
    the RSS (psutil when installed).
    """

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.extra: int | None = None
        self.method = ""
        self._sampler = None

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        if _reset_peak_rss():
            self.method = "VmHWM (reset via /proc/self/clear_refs)"
            self.base = _status_bytes("VmRSS")
        else:
            self._sampler = _RssSampler()
            self.base = self._sampler.peak
            self.method = "RSS sampled every 2 ms"
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self._sampler is not None:
            self._sampler.stop.set()
            self._sampler.join()
            self.extra = self._sampler.peak - self.base
        else:
            self.extra = (_status_bytes("VmHWM") or 0) - self.base
        return False


def memory_method(device) -> str:
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated (growth over the allocated memory at the start)"
    if _reset_peak_rss():
        return "process RSS: VmHWM reset through /proc/self/clear_refs, minus VmRSS at the start"
    return "process RSS sampled every 2 ms, minus the RSS at the start"


def measure(fn, device):
    """(seconds, extra peak memory in bytes, fn())."""
    with PeakMemory(device) as mem:
        seconds, result = timed(fn, device)
    return seconds, mem.extra, result


def evenly_spaced(items, k: int | None) -> list:
    """k items spread evenly over `items` (first and last included); all of them when k is None or ≥ len."""
    items = list(items)
    n = len(items)
    if k is None or k >= n:
        return items
    if k <= 1:
        return [items[n // 2]]
    return [items[i] for i in sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})]


def agreement(fast: dict, naive: dict) -> tuple[float, float]:
    """(min Pearson correlation, max relative error max|a-b|/max|b|) over the modules of `naive`."""
    corrs, rels = [], []
    for name, b in naive.items():
        a = fast[name]
        corrs.append(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1].item())
        rels.append(((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item())
    return min(corrs), max(rels)


def median_ms(seconds: list) -> float:
    return 1000 * statistics.median(seconds)
