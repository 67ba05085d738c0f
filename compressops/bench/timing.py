"""Timing and machine ceilings for the benchmarks: medians in one process, measured bandwidth."""

from __future__ import annotations

import math
import os

import torch
from torch.utils.benchmark import Timer

from ..info import cpu_model  # noqa: F401  (re-exported for the benchmark scripts)


def median_us(fn, min_run_time: float = 0.3) -> float:
    """Median wall time of fn() in microseconds (torch.utils.benchmark, after one warmup call)."""
    fn()
    m = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return m.median * 1e6


def read_bandwidth_gbs(nbytes: int, min_run_time: float = 0.3) -> float:
    """Read bandwidth (GB/s) of a float32 sum over `nbytes`, at the current thread count."""
    x = torch.ones(nbytes // 4)
    return nbytes / (median_us(x.sum, min_run_time) * 1e-6) / 1e9


def llc_bytes() -> int:
    """Size of the last-level cache from sysfs (32 MiB if it cannot be read)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    try:
        for idx in os.listdir(base):
            path = os.path.join(base, idx, "size")
            if idx.startswith("index") and os.path.exists(path):
                txt = open(path).read().strip()
                mult = {"K": 1024, "M": 1024**2}.get(txt[-1], 1)
                best = max(best, int(txt.rstrip("KM")) * mult)
    except OSError:
        pass
    return best or 32 * 1024**2


def copies_beyond_cache(weight_bytes: int, llc: int, factor: int = 3) -> int:
    """How many weight copies to rotate over so their total exceeds `factor` x the LLC."""
    return max(2, math.ceil(factor * llc / max(weight_bytes, 1)))
