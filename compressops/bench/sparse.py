"""Sparse linear benchmark: Sparse24Linear and CSRLinear against dense and sparse peers, in one process.

Rows per shape and thread count: fp32 and bf16 nn.Linear; compressops Sparse24Linear (fp32, bf16
and int8 kept values); CSRLinear (fp32 values) at 50/70/80/90/95% magnitude sparsity; torch.sparse
CSR (`W.to_sparse_csr()` with int32 indices) and scipy.sparse CSR (single-threaded whatever the
thread count) at the same sparsities. Every row reports its time, its speedup over fp32 nn.Linear
and its relative error against the float64 product with the weight that row computes with (for
2:4 int8 that includes the activation quantization); CSRLinear rows also over the fastest peer at
the same sparsity. % SoL at M <= 8: stored weight bytes (values and index) over the read bandwidth
measured in this run. The summary gives, per shape and thread count, the break-even sparsity of
CSRLinear against fp32 dense: the lowest measured sparsity at which it is faster. Rows whose op took
the dense route at that batch size (a torch GEMM on the weight decoded block by block,
csrc/cpu/dense_route.h) say so in their note.
"""

from __future__ import annotations

import warnings

import torch

import compressops as co
from compressops.bench import report, runner
from compressops.bench.linear import Layer, LinearFamily
from compressops.bench.runner import IMPL, SHAPE, SOL, X_PEER, Impl, Run, Speedup, Table
from compressops.isa import last_kernel_isa
from compressops.nn import CSRLinear, Sparse24Linear

FAMILY = "sparse"
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
QUICK_SPARSITIES = (0.5, 0.9)


def _torch_csr(w: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        s = w.to_sparse_csr()
        return torch.sparse_csr_tensor(s.crow_indices().int(), s.col_indices().int(), s.values(), s.shape)


def _scipy_csr(w: torch.Tensor):
    try:
        import scipy.sparse as sps
    except ImportError:
        return None
    return sps.csr_matrix(w.numpy())


def _route_note(op: str):
    """Adds "dense route" to the row's note when the op's last call decoded the weight and ran a GEMM."""
    def after_call(row):
        if last_kernel_isa(op) == "dense":
            row["note"] = ", ".join(filter(None, [row["note"], "dense route"]))
    return after_call


def break_even(rows, name, threads) -> str:
    best = None
    for r in rows:
        if r["shape"] == name and r["threads"] == threads and r["impl"].startswith("CSRLinear") and r["speedup"] > 1:
            s = float(r["impl"].split()[-1].rstrip("%"))
            best = s if best is None else min(best, s)
    return f"<= {best:.0f}%" if best is not None else "> measured range"


class SparseBench(LinearFamily):
    name, title, stem = FAMILY, "sparse linear", "sparse"
    quick_min_run_time = 0.1
    speedups = [Speedup("speedup", "fp32 nn.Linear")]
    plot_key = "speedup"
    tables = [Table([SHAPE, ("threads", "thr", ""), IMPL, ("us", "us", ".1f"), ("speedup", "x fp32", ".2f"), X_PEER,
                     SOL, ("relerr", "relerr", ".1e"), ("note", "note", "")])]
    legend = ["relerr: against the float64 product with the weight the row computes with; "
              "torch.sparse and scipy rows leave the bias out"]

    def add_arguments(self, parser):
        default, quick = ",".join(map(str, SPARSITIES)), ",".join(map(str, QUICK_SPARSITIES))
        parser.add_argument("--sparsities", help=f"comma-separated CSR sparsities (default {default}; "
                            f"--quick and --smoke: {quick})")

    def configure(self, run: Run) -> None:
        given = run.args.sparsities
        self.sparsities = ([float(s) for s in given.split(",")] if given
                           else QUICK_SPARSITIES if run.quick or run.smoke else SPARSITIES)

    def groups(self, shape, run: Run):
        torch.manual_seed(0)  # the same weights at every thread count: their break-even sparsities compare
        return super().groups(shape, run)

    def impls(self, layer: Layer, run: Run) -> list[Impl]:
        x, xb = layer.x, layer.xb
        fp32, bf16 = self.dense(layer)
        fp32.fields["note"] = ""
        bf16.exact, bf16.fields["note"] = layer.exact(layer.lin.weight.detach().bfloat16().float()), "bf16 in/out"
        out = [fp32, bf16]
        for label, cfg, xin, note, op in (
                ("Sparse24Linear fp32", co.Sparse24(), x, "", "sparse24_linear"),
                ("Sparse24Linear bf16", co.Sparse24(dtype=torch.bfloat16), xb, "bf16 in/out", "sparse24_linear"),
                ("Sparse24Linear int8", co.Sparse24(dtype=torch.int8), x, "int8 activations", "sparse24_int8_linear")):
            mod = Sparse24Linear.from_float(layer.lin, cfg)
            out.append(Impl(label, lambda mod=mod, xin=xin: mod(xin), "ours", layer.exact(mod.dequantize()),
                            mod.compressed_bytes(), match="2:4", fields={"note": note}, after_call=_route_note(op)))
        for s in self.sparsities:
            mod = CSRLinear.from_float(layer.lin, co.CSR(sparsity=s))
            wd, tag = mod.dequantize(), f"{s:.0%}"
            out.append(Impl(f"CSRLinear {tag}", lambda mod=mod: mod(x), "ours", layer.exact(wd),
                            mod.compressed_bytes(), match=tag, fields={"note": ""},
                            after_call=_route_note("csr_linear")))
            no_bias = layer.exact(wd, bias=False)
            tc = _torch_csr(wd)
            tc_bytes = sum(t.numel() * t.element_size() for t in (tc.crow_indices(), tc.col_indices(), tc.values()))
            out.append(Impl(f"torch.sparse CSR int32 {tag}", lambda tc=tc: torch.mm(tc, x.t()).t(), "peer", no_bias,
                            tc_bytes, match=tag, fields={"note": "no bias"}))
            sc = _scipy_csr(wd)
            if sc is not None and (layer.m <= 64 or s >= 0.9):
                xn = x.numpy()
                out.append(Impl(f"scipy.sparse CSR {tag}", lambda sc=sc, xn=xn: torch.from_numpy(sc @ xn.T).t(),
                                "peer", no_bias, sc.data.nbytes + sc.indices.nbytes + sc.indptr.nbytes, match=tag,
                                fields={"note": "single thread, no bias"}))
        return out

    def finish(self, rows: list[dict], run: Run) -> None:
        super().finish(rows, run)
        cases = dict.fromkeys((r["shape"], r["threads"]) for r in rows)
        self.break_even = [{"shape": s, "threads": t, "break_even": break_even(rows, s, t)} for s, t in cases]

    def meta(self, run: Run) -> dict:
        return {"sparsities": list(self.sparsities), "summary": self.break_even}

    def summary(self, rows: list[dict], run: Run) -> None:
        print("\nCSRLinear break-even sparsity against fp32 nn.Linear (lowest measured sparsity that is faster):\n")
        print(report.markdown_table(self.break_even, [SHAPE, ("threads", "thr", ""), ("break_even", "break-even", "")]))


def main(argv=None) -> int:
    return runner.main(SparseBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
