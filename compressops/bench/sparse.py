"""Sparse linear benchmark: Sparse24Linear and CSRLinear against dense and sparse peers, in one process.

Rows per shape and thread count: fp32 and bf16 nn.Linear; compressops Sparse24Linear (fp32, bf16
and int8 kept values); CSRLinear (fp32 values) at 50/70/80/90/95% magnitude sparsity; torch.sparse
CSR (`W.to_sparse_csr()` with int32 indices) and scipy.sparse CSR (single-threaded whatever the
thread count) at the same sparsities. Every row reports its time, its speedup over fp32 nn.Linear
and its relative error against the float64 product with the weight that row computes with (for
2:4 int8 that includes the activation quantization). The summary gives, per shape and thread
count, the break-even sparsity of CSRLinear against fp32 dense: the lowest measured sparsity at
which it is faster. Rows whose op took the dense route at that batch size (a torch GEMM on the
weight decoded block by block, csrc/cpu/dense_route.h) say so in their note.
"""

from __future__ import annotations

import argparse
import datetime
import warnings
from pathlib import Path

import torch
from torch import nn

import compressops as co
from compressops.bench import report, shapes, timing
from compressops.info import cpu_model
from compressops.nn import CSRLinear, Sparse24Linear

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def _relerr(y, ref) -> float:
    y = y.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _torch_csr(w: torch.Tensor):
    s = w.to_sparse_csr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(s.crow_indices().int(), s.col_indices().int(), s.values(), s.shape)


def _scipy_csr(w: torch.Tensor):
    try:
        import scipy.sparse as sps
    except ImportError:
        return None
    return sps.csr_matrix(w.numpy())


def bench_shape(name, m, n, k, threads, mrt, sparsities, rows):
    torch.manual_seed(0)
    lin = nn.Linear(k, n)
    x = torch.randn(m, k)
    xd = x.double()
    w = lin.weight.detach()
    b = lin.bias.detach()

    def add(impl, fn, w_eff, base=None, note="", op=None):
        with torch.inference_mode():
            us = timing.median_us(fn, mrt)
            y = fn()
        if op is not None and torch.ops.compressops._last_kernel_isa(op) == "dense":
            note = ", ".join(filter(None, [note, "dense route"]))
        ref = xd @ w_eff.double().t() + (0 if "no bias" in note else b.double())
        rows.append({"shape": name, "threads": threads, "impl": impl, "us": us, "note": note,
                     "relerr": _relerr(y, ref)})
        return us

    fp32_us = add("fp32 nn.Linear", lambda: lin(x), w)
    lin_bf = nn.Linear(k, n).to(torch.bfloat16)
    lin_bf.load_state_dict({"weight": w.bfloat16(), "bias": b.bfloat16()})
    xb = x.bfloat16()
    add("bf16 nn.Linear", lambda: lin_bf(xb), w.bfloat16().float(), note="bf16 in/out")
    for label, cfg in (("Sparse24Linear fp32", co.Sparse24()),
                       ("Sparse24Linear bf16", co.Sparse24(dtype=torch.bfloat16)),
                       ("Sparse24Linear int8", co.Sparse24(dtype=torch.int8))):
        mod = Sparse24Linear.from_float(lin, cfg)
        xin = xb if cfg.dtype == "bfloat16" else x
        add(label, lambda mod=mod, xin=xin: mod(xin), mod.dequantize(),
            note="bf16 in/out" if cfg.dtype == "bfloat16" else ("int8 activations" if cfg.dtype == "int8" else ""),
            op="sparse24_int8_linear" if cfg.dtype == "int8" else "sparse24_linear")
    for s in sparsities:
        mod = CSRLinear.from_float(lin, co.CSR(sparsity=s))
        wd = mod.dequantize()
        add(f"CSRLinear {s:.0%}", lambda mod=mod: mod(x), wd, op="csr_linear")
        tc = _torch_csr(wd)
        add(f"torch.sparse CSR int32 {s:.0%}", lambda tc=tc: torch.mm(tc, x.t()).t(), wd, note="no bias")
        sc = _scipy_csr(wd)
        if sc is not None and (m <= 64 or s >= 0.9):
            xn = x.numpy()
            add(f"scipy.sparse CSR {s:.0%}", lambda sc=sc, xn=xn: torch.from_numpy(sc @ xn.T).t(), wd,
                note="single thread, no bias")
    for r in rows:
        if r["shape"] == name and r["threads"] == threads:
            r["speedup"] = fp32_us / r["us"]
    return fp32_us


def break_even(rows, name, threads) -> str:
    best = None
    for r in rows:
        if r["shape"] == name and r["threads"] == threads and r["impl"].startswith("CSRLinear") and r["speedup"] > 1:
            s = float(r["impl"].split()[-1].rstrip("%"))
            best = s if best is None else min(best, s)
    return f"<= {best:.0f}%" if best is not None else "> measured range"


def run(shape_set, threads_list, mrt, sparsities, out_dir: Path) -> int:
    rows = []
    old = torch.get_num_threads()
    summary = []
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for name, m, n, k in shapes.SETS[shape_set]:
                bench_shape(name, m, n, k, threads, mrt, sparsities, rows)
                summary.append({"shape": name, "threads": threads, "break_even": break_even(rows, name, threads)})
    finally:
        torch.set_num_threads(old)
    cols = [("shape", "shape", ""), ("threads", "thr", ""), ("impl", "implementation", ""), ("us", "us", ".1f"),
            ("speedup", "x fp32", ".2f"), ("relerr", "relerr", ".1e"), ("note", "note", "")]
    print(f"# compressops sparse benchmark ({cpu_model()}, isa {co.isa()})\n")
    print(report.markdown_table(rows, cols))
    print("\nCSRLinear break-even sparsity against fp32 nn.Linear (lowest measured sparsity that is faster):\n")
    print(report.markdown_table(summary, [("shape", "shape", ""), ("threads", "thr", ""),
                                          ("break_even", "break-even", "")]))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"sparse-{stamp}.json"
    report.write_json(path, {"cpu": cpu_model(), "isa": co.isa(), "shape_set": shape_set, "threads": threads_list,
                             "summary": summary, "torch": torch.__version__}, rows)
    print(f"\nJSON: {path}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="design", choices=sorted(shapes.SETS))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    p.add_argument("--quick", action="store_true", help="target shapes, 2 threads, 50%% and 90%% only, short timing")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--isa", help="force a lower compressops CPU level for the whole run")
    p.add_argument("--out", default="benchmarks/results", help="directory for JSON")
    a = p.parse_args(argv)
    if a.isa:
        co.set_isa(a.isa)
    shape_set, threads, mrt = a.shapes, [int(t) for t in a.threads.split(",")], a.min_run_time
    sparsities = [float(s) for s in a.sparsities.split(",")]
    if a.quick:
        shape_set, threads, mrt, sparsities = "quick", [2], min(mrt, 0.1), [0.5, 0.9]
    return run(shape_set, threads, mrt, sparsities, Path(a.out))


if __name__ == "__main__":
    raise SystemExit(main())
