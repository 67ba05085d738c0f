"""convert(..., only_if_faster=True): time each compressed layer against the dense one it replaces.

convert runs the float model once on `example_inputs` and keeps each candidate layer's first input
(forward pre-hooks). After converting a layer it calls the dense and the compressed module on that
input, in turns, and keeps the compressed one only when it is faster by more than NOISE_MARGIN;
otherwise the dense module stays, with the measured speedup and the reason in compressops.report.

Timing, per layer (under torch.inference_mode, at the process's torch thread count):
- WARMUP_CALLS calls of each module first (a compressed module may prepack or allocate on its first
  call);
- then rounds of one call of each, the order swapped every round so that neither always runs right
  after the other; rounds continue until LAYER_BUDGET_S of timed calls are spent, with at least
  MIN_ROUNDS (so a layer whose call takes longer than LAYER_BUDGET_S / (2 * MIN_ROUNDS) runs past
  the budget) and at most MAX_ROUNDS;
- speedup = median dense call time / median compressed call time.
A model with L candidate layers adds about L * (LAYER_BUDGET_S + warmup) seconds to convert (MiniLM-L6:
37 Linear layers, about 3 s on a quiet machine; far more on a busy one, where a stalled call can take
tens of ms and MIN_ROUNDS decides).

A layer timed alone sees its weights stay in cache between calls, which it may not in the model; the
measurement is of the layer, the guarantee it gives is per layer.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

SPEED_ATTR = "_compressops_speedups"  # on a converted model: {layer name: Measurement}

# Seconds of timed calls per layer (both modules together), and the bounds on the rounds.
LAYER_BUDGET_S = 0.05
MIN_ROUNDS = 5  # a median of 3 calls moved a copy of a layer by +-10-15% even on a quiet machine
MAX_ROUNDS = 1000
WARMUP_CALLS = 2

# A compressed layer stays only when its measured speedup is at least 1 + NOISE_MARGIN: inside it,
# two identical layers can measure apart (benchmarks/speedcheck_noise.py times a dense layer against
# a copy of itself exactly as convert does). On a quiet 2-vCPU Zen 4 it covered 90% of the trials of a
# layer timed over 10+ rounds (p5-p95 0.965-1.033x, benchmarks/RESULTS.md); fewer rounds (a layer
# slower than ~5 ms a call) spread wider, and under load far wider (+-20-40% at 1.5 busy cores of
# 2), which no margin covers: convert warns instead (BUSY_LOAD).
NOISE_MARGIN = 0.03
# Cores other processes may keep busy on average while the layers are timed before convert warns
# that its choices may be noise (on a 2-core machine one busy neighbour stalls 2-thread regions).
BUSY_LOAD = 0.1

# The clock the timing loop reads (seconds); tests replace it with a fake one.
clock = time.perf_counter


@dataclass(frozen=True)
class Measurement:
    """One layer's timing: median seconds per call of the dense and the compressed module on the
    input it received while the model ran `example_inputs`."""

    dense_s: float
    compressed_s: float
    shape: tuple[int, ...]  # of the layer's (first tensor) input, e.g. (8, 128, 384)
    rounds: int

    @property
    def speedup(self) -> float:
        """Dense time / compressed time (> 1: the compressed layer is faster)."""
        return self.dense_s / self.compressed_s if self.compressed_s > 0 else float("inf")

    @property
    def faster(self) -> bool:
        """Whether the compressed layer is faster by more than the noise margin (it is kept)."""
        return self.speedup >= 1.0 + NOISE_MARGIN

    def describe(self) -> str:
        """The report's note: "slower than dense at [8, 128, 384]: 0.93x" and the like."""
        at = f"at {list(self.shape)}: {self.speedup:.2f}x"
        if self.faster:
            return f"faster than dense {at}"
        if self.speedup < 1.0:
            return f"slower than dense {at}; kept dense (only_if_faster)"
        return f"not faster than dense beyond the {NOISE_MARGIN:.0%} noise margin {at}; kept dense (only_if_faster)"


def check_example_inputs(example_inputs, only_if_faster: bool) -> None:
    """Check convert's only_if_faster / example_inputs pair.

    Raises:
        ValueError: only_if_faster without example_inputs, or example_inputs without only_if_faster.
        TypeError: example_inputs is not one batch: a tensor, a tuple of positional args or a dict
            of keyword args (str keys).
    """
    if not only_if_faster:
        if example_inputs is not None:
            raise ValueError("convert: example_inputs is only used with only_if_faster=True "
                             "(calibration batches go to calibration_data)")
        return
    if example_inputs is None:
        raise ValueError("convert: only_if_faster=True needs example_inputs (one batch the model runs on, "
                         "whose layer inputs set the shapes each layer is timed at)")
    if isinstance(example_inputs, (torch.Tensor, tuple)):
        return
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"convert: example_inputs as a dict holds keyword arguments, so its keys must be str, "
                            f"got {bad[0]!r}")
        return
    hint = " (one batch, not a list of batches: a tuple of positional args)" if isinstance(example_inputs, list) else ""
    raise TypeError(f"convert: example_inputs must be a tensor, a tuple of positional args or a dict of keyword "
                    f"args{hint}, got {type(example_inputs).__name__}")


def _cloned(value):
    # the model may later modify its activations in place; the timed input must be the one it saw
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


@torch.no_grad()
def capture_inputs(model: nn.Module, modules: list[nn.Module], example_inputs) -> dict[int, tuple[tuple, dict]]:
    """Run `model` once on `example_inputs` and return {id(module): (args, kwargs)} of the first call
    of each of `modules` (tensors cloned). A module the run never calls has no entry."""
    seen: dict[int, tuple[tuple, dict]] = {}
    if not modules:
        return seen

    def hook(mod, args, kwargs):
        if id(mod) not in seen:
            seen[id(mod)] = (tuple(_cloned(a) for a in args), {k: _cloned(v) for k, v in kwargs.items()})

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in {id(m): m for m in modules}.values()]
    try:
        if isinstance(example_inputs, Mapping):
            model(**example_inputs)
        elif isinstance(example_inputs, tuple):
            model(*example_inputs)
        else:
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, ...]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    return ()


def _syncs(args: tuple, kwargs: dict) -> bool:
    """Whether a call must be waited for: an input on an asynchronous (CUDA) device."""
    return any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in (*args, *kwargs.values()))


def other_busy_seconds() -> float | None:
    """CPU seconds spent so far by every process on this machine but this one (Linux /proc; None
    elsewhere). The benchmarks' other-load column reads it too (compressops.bench.timing)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    # /proc/stat's first line: user nice system idle iowait ...; idle and iowait are not busy.
    # /proc/self/stat after the command name: utime and stime are the 12th and 13th fields.
    others = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0) - int(own[11]) - int(own[12])
    return max(others, 0) / os.sysconf("SC_CLK_TCK")


def measure(dense: nn.Module, compressed: nn.Module, args: tuple, kwargs: dict,
            budget_s: float | None = None) -> Measurement:
    """Median time per call of `dense(*args, **kwargs)` and `compressed(*args, **kwargs)`, timed in
    turns (the module docstring says how).

    Args:
        dense: the float module.
        compressed: the module that replaces it (it takes the same input).
        args: one call's positional arguments (e.g. (x,) with x float32 [8, 128, 384]).
        kwargs: its keyword arguments.
        budget_s: seconds of timed calls (both modules together); LAYER_BUDGET_S when None.
    Returns:
        Measurement (dense_s, compressed_s medians in seconds, the input's shape, the rounds run).
    """
    budget = LAYER_BUDGET_S if budget_s is None else budget_s
    sync = torch.cuda.synchronize if _syncs(args, kwargs) else (lambda: None)
    times: tuple[list[float], list[float]] = ([], [])
    pair = (dense, compressed)
    with torch.inference_mode():
        for _ in range(WARMUP_CALLS):
            for mod in pair:
                mod(*args, **kwargs)
        sync()
        spent, rounds = 0.0, 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or spent < budget):
            for i in ((0, 1) if rounds % 2 == 0 else (1, 0)):
                t0 = clock()
                pair[i](*args, **kwargs)
                sync()
                dt = clock() - t0
                times[i].append(dt)
                spent += dt
            rounds += 1
    return Measurement(statistics.median(times[0]), statistics.median(times[1]), _input_shape(args, kwargs), rounds)


class LayerTimer:
    """convert's side of only_if_faster: the layers' captured inputs, and a verdict per layer.

    Args:
        model: the float model, before any layer is replaced.
        modules: the candidate layers (the model's own modules).
        example_inputs (Tensor | tuple | dict): one batch (checked by check_example_inputs).
    """

    def __init__(self, model: nn.Module, modules: list[nn.Module], example_inputs):
        self.inputs = capture_inputs(model, modules, example_inputs)
        self.records: dict[str, Measurement] = {}  # layer name -> its timing
        self._verdicts: dict[int, tuple[Measurement | None, str | None]] = {}  # id(dense module) -> verdict
        self._other_s = self._wall_s = 0.0

    def verdict(self, name: str, dense: nn.Module, compressed: nn.Module | None) -> str | None:
        """None when `compressed` is faster than `dense` (keep it), else why the dense layer stays.
        A module met under several names is timed once: at its later names `compressed` may be
        None, and the first verdict is recorded under the new name too."""
        if id(dense) not in self._verdicts:
            self._verdicts[id(dense)] = self._judge(dense, compressed)
        found, reason = self._verdicts[id(dense)]
        if found is not None:
            self.records[name] = found
        return reason

    def _judge(self, dense: nn.Module, compressed: nn.Module) -> tuple[Measurement | None, str | None]:
        if id(dense) not in self.inputs:
            return None, "not called while the model ran example_inputs, so not timed; kept dense (only_if_faster)"
        args, kwargs = self.inputs[id(dense)]
        o0, t0 = other_busy_seconds(), time.perf_counter()
        found = measure(dense, compressed, args, kwargs)
        o1 = other_busy_seconds()
        if o0 is not None and o1 is not None:
            self._other_s += o1 - o0
            self._wall_s += time.perf_counter() - t0
        return found, None if found.faster else found.describe()

    @property
    def other_load(self) -> float | None:
        """Cores other processes kept busy, on average, while layers were timed (None: not known)."""
        return self._other_s / self._wall_s if self._wall_s > 0 else None
