"""Timing and machine ceilings for the benchmarks: medians in one process, measured bandwidth."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Timer

from compressops.speedcheck import other_busy_seconds

# Cores other processes may keep busy while a row is timed before the row is void: on a 2-core
# machine more than this stalls every 2-thread parallel region (see other_cpu_seconds).
VOID_LOAD = 0.1


def median_us(fn, min_run_time: float = 0.3) -> float:
    """Median wall time of fn() in microseconds (torch.utils.benchmark, after one warmup call)."""
    fn()
    m = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return m.median * 1e6


@dataclass
class Timing:
    """One implementation's result from interleaved()."""

    us: float  # median wall time of one fn() call, microseconds
    other_load: float  # average cores other processes kept busy while this fn was being timed

    @property
    def void(self) -> bool:
        return self.other_load > VOID_LOAD


def interleaved(fns, min_run_time: float = 0.3, rounds: int = 3) -> list[Timing]:
    """Median time of every fn() in `fns`, timed in turns: each gets `rounds` turns of
    min_run_time / rounds seconds, one after the other's.

    Timing one implementation after another lets a neighbour's burst or a clock change land on
    whichever was being timed then; in turns it lands on all of them alike. Each turn runs blocks of
    calls (about a tenth of a turn each, so the timer's own cost vanishes) through
    torch.utils.benchmark; the median is over every block of every turn. Call each fn once before
    (warmup). The other load is measured over the fn's own turns only.
    """
    timers = [Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for fn in fns]
    turn = min_run_time / max(rounds, 1)
    numbers = [_block_size(t, turn / 10) for t in timers]
    samples: list[list[float]] = [[] for _ in fns]
    busy, wall = [0.0] * len(fns), [0.0] * len(fns)
    for _ in range(max(rounds, 1)):
        for i, (timer, number) in enumerate(zip(timers, numbers)):
            o0, t0 = other_cpu_seconds(), time.perf_counter()
            spent = 0.0
            while spent < turn:
                per_call = timer.timeit(number).median
                samples[i].append(per_call)
                spent += per_call * number
            busy[i] += other_cpu_seconds() - o0
            wall[i] += time.perf_counter() - t0
    # Clamped: /proc counts in clock ticks, so a quiet machine can read slightly below zero.
    return [Timing(statistics.median(s) * 1e6, max(0.0, b / w)) for s, b, w in zip(samples, busy, wall)]


def _block_size(timer: Timer, target_s: float, most: int = 1 << 20) -> int:
    """Calls per timed block so that a block takes at least target_s (at least 1)."""
    number = 1
    while True:
        block = timer.timeit(number).median * number
        if block >= target_s or number >= most:
            return number
        number = min(most, max(2 * number, math.ceil(number * target_s / max(block, 1e-9))))


def read_bandwidth_gbs(nbytes: int, min_run_time: float = 0.3) -> float:
    """Read bandwidth (GB/s) over `nbytes` of float32 at the current thread count: the best of a sum
    and a matrix-vector product (1024 columns) over the same buffer."""
    x = torch.ones(nbytes // 4)
    # torch.sum alone reads slower than MKL's GEMV on this kind of VM (12.6 vs 16.2 GB/s, 1 thread,
    # 16 MiB), so fp32 nn.Linear at M=1 came out above 100% of a sum-only "ceiling".
    xm, v = x.view(-1, 1024), torch.ones(1024)
    best_us = min(median_us(x.sum, min_run_time), median_us(lambda: torch.mv(xm, v), min_run_time))
    return nbytes / (best_us * 1e-6) / 1e9


def int8_gemm_peak(min_run_time: float = 0.3) -> dict:
    """Throughput (TOP/s) of int8 GEMM kernels alone at the current thread count, {name: TOP/s}.

    Candidates: the default quantized engine's linear kernel on already-quantized activations
    (M=512, N=K=4096), and torch._int_mm at 512^3. _int_mm is not timed at 4096^3: without
    AVX-512 VNNI/AMX it falls back to a generic loop (about 1-2 GOP/s here, over a minute a call).
    """
    out = {}
    with torch.inference_mode():
        m, n, k = 512, 4096, 4096
        w = torch.randn(n, k)
        wq = torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(wq, None)
        xq = torch.quantize_per_tensor(torch.randn(m, k), 0.03, 128, torch.quint8)
        us = median_us(lambda: torch.ops.quantized.linear(xq, packed, 1.0, 0), min_run_time)
        out[f"quantized.linear kernel ({torch.backends.quantized.engine}, M=512 N=K=4096)"] = 2 * m * n * k / us / 1e6
        s = 512
        a = torch.randint(-128, 127, (s, s), dtype=torch.int8)
        b = torch.randint(-128, 127, (s, s), dtype=torch.int8).t().contiguous().t()
        us = median_us(lambda: torch._int_mm(a, b), min_run_time)
        out["torch._int_mm (512^3)"] = 2 * s**3 / us / 1e6
    return out


def other_cpu_seconds() -> float:
    """CPU seconds used so far by everything on this machine except this process (Linux /proc; 0 elsewhere).

    Take it before and after a measurement: on a 2-core VM one busy neighbour stalls every 2-thread
    parallel region for a scheduler slice (a 300 us GEMV became 8 ms), so rows need this to be trusted.
    """
    busy = other_busy_seconds()
    return 0.0 if busy is None else busy


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
