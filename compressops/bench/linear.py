"""What the linear families' benchmarks share: one layer and input per shape, the dense fp32/bf16 rows,
the weights-beyond-cache ("cold") rows and % SoL against the measured read bandwidth."""

from __future__ import annotations

import copy
import functools
from typing import Callable, Iterator

import torch
from torch import nn

from compressops.bench import shapes, timing
from compressops.bench.runner import (GBS, IMPL, MEDIAN_US, REL_ERR, SHAPE, SOL, THREADS, TOPS, X_BF16, X_FP32,
                                      X_PEER, Family, Group, Impl, Run, Speedup)

COLUMNS = [SHAPE, THREADS, IMPL, MEDIAN_US, X_FP32, X_BF16, X_PEER, GBS, TOPS, SOL, REL_ERR]
COLD_LEGEND = ("cold rows: M=1, one call per layer copy per iteration over enough copies that their weights "
               "total > 3x the LLC (the copy count is in the JSON)")
REL_ERR_LEGEND = "rel. err: ||y - y_exact|| / ||y_exact|| against the float64 product with the original fp32 weights"


class Layer:
    """The nn.Linear(K, N) of a shape (name, M, N, K), its bf16 copy and a float32 input x [M, K]."""

    def __init__(self, shape: tuple[str, int, int, int]):
        self.name, self.m, self.n, self.k = shape
        self.lin = nn.Linear(self.k, self.n)
        self.lin_bf16 = copy.deepcopy(self.lin).to(torch.bfloat16)  # the same weights, rounded
        self.x = torch.randn(self.m, self.k)
        self.xb = self.x.bfloat16()
        self._exact: torch.Tensor | None = None

    def exact(self, weight: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        """float64 [M, N]: x @ weight.T (+ the layer's bias); weight [N, K], default the fp32 layer's."""
        if weight is None and bias and self._exact is not None:
            return self._exact
        w = (self.lin.weight if weight is None else weight).detach().double()
        y = self.x.double() @ w.t()
        y = y + self.lin.bias.detach().double() if bias else y
        if weight is None and bias:
            self._exact = y
        return y


def _call_each(copies, x):
    for c in copies:
        c(x)


class LinearFamily(Family):
    """A family whose shapes are linear layers (compressops.bench.shapes): one group per shape, and a
    cold group at M=1 when cold_builds() names implementations."""

    shape_sets = shapes.SETS
    measures_bandwidth = True
    speedups = [Speedup("speedup_fp32", "fp32 nn.Linear"), Speedup("speedup_bf16", "bf16 nn.Linear")]
    tables = []

    def impls(self, layer: Layer, run: Run) -> list[Impl]:
        raise NotImplementedError

    def cold_builds(self, run: Run) -> list[tuple[str, str, Callable[[nn.Linear], Callable], Callable]]:
        """(label, role, build(nn.Linear) -> callable layer, weight bytes(N, K) -> int) of the cold rows."""
        return []

    def groups(self, shape, run: Run) -> Iterator[Group]:
        layer = Layer(shape)
        n, k = layer.n, layer.k
        yield Group(layer.name, self.impls(layer, run), {"m": layer.m, "n": n, "k": k}, ops=2 * layer.m * n * k)
        builds = self.cold_builds(run)
        if run.cold and layer.m == 1 and builds:
            x = torch.randn(1, k)
            impls = []
            for label, role, build, nbytes in builds:
                copies = [build(nn.Linear(k, n)) for _ in range(timing.copies_beyond_cache(nbytes(n, k), run.llc))]
                impls.append(Impl(label, functools.partial(_call_each, copies, x), role, weight_bytes=nbytes(n, k),
                                  calls=len(copies), fields={"copies": len(copies)}))
            # The copy count follows each implementation's weight bytes; it stays out of the shape label
            # so that the cold rows of one shape compare with each other.
            yield Group(f"{layer.name} cold", impls, {"m": 1, "n": n, "k": k}, ops=2 * n * k, dram=True)

    def dense(self, layer: Layer) -> list[Impl]:
        """fp32 and bf16 nn.Linear, rel. err against the fp32 weights."""
        n, k = layer.n, layer.k
        return [Impl("fp32 nn.Linear", lambda: layer.lin(layer.x), "dense", layer.exact(), 4 * n * k),
                Impl("bf16 nn.Linear", lambda: layer.lin_bf16(layer.xb), "dense", layer.exact(), 2 * n * k)]

    def finish(self, rows: list[dict], run: Run) -> None:
        for r in rows:
            if r["m"] <= 8 and r.get("bw_ref"):
                r["sol_pct"] = 100 * r["gbs"] / r["bw_ref"]
                r["sol_basis"] = "weight bytes / read bandwidth"
