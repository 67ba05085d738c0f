"""half linear benchmark: HalfLinear (float16 weights, float32 sums) against dense fp32/bf16 nn.Linear, in one process.

Rows per shape and thread count (each with its output error against the exact float64 product with the
original fp32 weights): compressops HalfLinear (fp32 in/out) at the active ISA and at each lower level it
has (scalar only where it is quick), fp32 and bf16 nn.Linear, torch's own float16 nn.Linear (the same
weight bytes; the peer), and the pure-PyTorch reference with --with-reference. Speed-of-light at M <= 8:
the weight bytes over the read bandwidth measured in this run. Cold rows: M=1 rotating over enough layer
copies that the weights cannot stay in the last-level cache.
"""

from __future__ import annotations

import copy

import torch

import compressops as co
from compressops.bench import runner
from compressops.bench.linear import COLD_LEGEND, COLUMNS, REL_ERR_LEGEND, Layer, LinearFamily
from compressops.bench.runner import Impl, Run, Table, Target
from compressops.isa import kernel_isas, kernel_level_for
from compressops.nn import HalfLinear

FAMILY = "half"
# The scalar level is there for correctness, not speed: above this M*N*K a call takes seconds.
SCALAR_MAX_MNK = 4096 * 4096


def _at_level(level, q, x):
    with co.cpu_isa(level):
        return q(x)


def _fp16_linear(lin):
    return copy.deepcopy(lin).half()


class HalfBench(LinearFamily):
    name, title, stem = FAMILY, "half (float16 weight) linear", "half_linear"
    has_cold = True
    tables = [Table(COLUMNS)]
    legend = ["% SoL: M <= 8 weight bytes / measured read bandwidth (cache-resident when the weight fits in half "
              "the LLC, DRAM otherwise)", "fp16 nn.Linear: torch's float16 layer on float16 inputs (the peer)",
              COLD_LEGEND, REL_ERR_LEGEND]

    def add_arguments(self, parser):
        parser.add_argument("--with-reference", action="store_true", help="also time the pure-PyTorch reference")

    def setup(self, run: Run) -> None:
        # Rows per level the op has a kernel for: above avx2 the active level runs the avx2 kernel.
        self.active = kernel_level_for("half_linear", co.isa()) if co.isa() != "reference" else co.isa()
        self.lower = [lv for lv in co.available_isas() if lv in kernel_isas("half_linear") and lv != self.active]

    def impls(self, layer: Layer, run: Run) -> list[Impl]:
        lin, x, exact, (m, n, k) = layer.lin, layer.x, layer.exact(), (layer.m, layer.n, layer.k)
        q = HalfLinear.from_float(lin)
        out = [Impl(f"compressops half ({self.active})", lambda: q(x), "ours", exact, 2 * n * k)]
        for lv in self.lower:
            if lv == "scalar" and m * n * k > SCALAR_MAX_MNK:
                run.note(f"compressops half ({lv}) skipped where M*N*K > 4096*4096 (seconds a call)")
                continue
            out.append(Impl(f"compressops half ({lv})", (lambda lv=lv: _at_level(lv, q, x)), "ours", exact, 2 * n * k))
        lin16, xh = _fp16_linear(lin), x.half()
        out += [*self.dense(layer), Impl("fp16 nn.Linear", lambda: lin16(xh), "peer", exact, 2 * n * k)]
        if run.args.with_reference:
            out.append(Impl("reference (pure torch)", lambda: co.reference.half_linear(x, q.weight_packed, q.bias),
                            "reference", exact, 2 * n * k))
        return out

    def cold_builds(self, run: Run):
        return [(f"compressops half ({self.active})", "ours", HalfLinear.from_float, lambda n, k: 2 * n * k),
                ("fp32 nn.Linear", "dense", lambda lin: lin, lambda n, k: 4 * n * k),
                ("bf16 nn.Linear", "dense", lambda lin: lin.to(torch.bfloat16), lambda n, k: 2 * n * k)]

    def summary(self, rows: list[dict], run: Run) -> None:
        ours = f"compressops half ({self.active})"
        shape = "4096x4096 M=1"
        # Half the bytes of fp32 at M=1, where the weight stream is the whole cost.
        runner.print_targets(rows, "Targets (K=N=4096, M=1, 2 threads; measured, not asserted):", [
            Target("M=1", shape, ours, "fp32", "fp32 nn.Linear", 1.5),
            Target("M=1", shape, ours, "bf16", "bf16 nn.Linear", 1.0),
        ])


def main(argv=None) -> int:
    return runner.main(HalfBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
