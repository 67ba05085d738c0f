"""int4 linear benchmark: Int4Linear against dense fp32/bf16 and the int4 peers, in one process.

Rows per shape and thread count (each with its output error against the float64 product with the
original fp32 weights): compressops Int4Linear (g128 asymmetric RTN, fp32 in/out, W4A8 with the
activation quantization included) at the active ISA, fp32 and bf16 nn.Linear, torch's own CPU int4
(aten._weight_int4pack_mm_for_cpu, bf16 activations, the same codes/scales/zero points) and
onnxruntime MatMulNBits (4-bit, block 128, accuracy_level 4, the same codes) when installed, built
directly with onnx.helper. Speed-of-light at M <= 8: int4 weight bytes over the read bandwidth
measured in this run. Cold rows: M=1 rotating over enough layer copies that the weights cannot
stay in the last-level cache.
"""

from __future__ import annotations

import argparse
import copy
import datetime
from pathlib import Path

import torch
from torch import nn

import compressops as co
from compressops.bench import report, shapes, timing
from compressops.bench.int8_linear import _timed
from compressops.formats import int4 as f4
from compressops.info import cpu_model
from compressops.nn import Int4Linear

GROUP = 128


def _torch_int4(q: Int4Linear):
    """aten int4pack (bf16 activations) for the same codes: w = (q - 8) * s + (8 - z) * s."""
    codes = f4.unpack_nibbles(q.qweight)[:, :q.in_features].to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    z = q.zeros.float() if q.zeros is not None else torch.full_like(q.scales, 8.0)
    sz = torch.stack([q.scales.t(), ((8 - z) * q.scales).t()], dim=-1).contiguous().bfloat16()
    bias = q.bias.bfloat16() if q.bias is not None else None

    def fn(xb):
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, q.group_size, sz)
        return y + bias if bias is not None else y

    return fn


def _ort_matmulnbits(q: Int4Linear, threads: int):
    """onnxruntime MatMulNBits over the same codes, or (None, reason)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return None, f"onnxruntime rows skipped: {e}"
    n, k, gs = q.out_features, q.in_features, q.group_size
    if k % gs:
        return None, "onnxruntime rows need K to be a multiple of the block size"
    g = k // gs
    codes = f4.unpack_nibbles(q.qweight)[:, :k].view(n, g, gs // 2, 2)
    b = (codes[..., 0] | (codes[..., 1] << 4)).to(torch.uint8).numpy()  # [N, K/gs, gs/2]
    zp = q.zeros.numpy() if q.zeros is not None else np.full((n, g), 8, np.uint8)
    zpk = np.zeros((n, (g + 1) // 2), np.uint8)
    for i in range(g):
        zpk[:, i // 2] |= (zp[:, i] << (4 * (i % 2))).astype(np.uint8)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(q.scales.numpy().reshape(-1), "scales"),
             numpy_helper.from_array(zpk.reshape(-1), "zero_points")]
    nodes = [helper.make_node("MatMulNBits", ["A", "B", "scales", "zero_points"], ["Y"], domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=gs, accuracy_level=4)]
    if q.bias is not None:
        inits.append(numpy_helper.from_array(q.bias.numpy(), "bias"))
        nodes[0].output[0] = "YM"
        nodes.append(helper.make_node("Add", ["YM", "bias"], ["Y"]))
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), None


def run(shape_set: str, threads_list: list[int], min_run_time: float, cold: bool, out_dir: Path) -> int:
    torch.manual_seed(0)
    llc = timing.llc_bytes()
    rows, notes = [], []
    active = co.isa()
    cfg = co.Int4(group_size=GROUP)
    for threads in threads_list:
        torch.set_num_threads(threads)
        bw_cache = timing.read_bandwidth_gbs(min(16 * 2**20, llc // 2), min_run_time)
        bw_dram = timing.read_bandwidth_gbs(1 << 30, min_run_time)
        notes.append(f"{threads} thr: read bandwidth {bw_cache:.1f} GB/s (cache-resident), {bw_dram:.1f} GB/s (DRAM)")
        for name, m, n, k in shapes.SETS[shape_set]:
            lin = nn.Linear(k, n)
            lin_bf16 = copy.deepcopy(lin).to(torch.bfloat16)
            q = Int4Linear.from_float(lin, cfg)
            tq = _torch_int4(q)
            sess, why = _ort_matmulnbits(q, threads)
            if why and why not in notes:
                notes.append(why)
            x = torch.randn(m, k)
            xb = x.bfloat16()
            wbytes4 = n * k // 2
            impls = [(f"compressops int4 g{GROUP} ({active})", lambda: q(x), wbytes4),
                     ("fp32 nn.Linear", lambda: lin(x), 4 * n * k), ("bf16 nn.Linear", lambda: lin_bf16(xb), 2 * n * k),
                     ("torch int4pack_mm (bf16 act)", lambda: tq(xb), wbytes4)]
            if sess is not None:
                xn = x.numpy()
                impls.append(("onnxruntime MatMulNBits (acc. level 4)", lambda: sess.run(None, {"A": xn}), wbytes4))
            with torch.inference_mode():
                exact = x.double() @ lin.weight.double().t() + lin.bias.double()
                for impl, fn, wbytes in impls:
                    y = fn()
                    y = torch.from_numpy(y[0]) if isinstance(y, list) else y
                    relerr = ((y.double() - exact).norm() / exact.norm()).item()
                    us, other = _timed(fn, min_run_time)
                    bw = bw_cache if wbytes <= llc // 2 else bw_dram
                    rows.append({"shape": name, "m": m, "n": n, "k": k, "threads": threads, "impl": impl, "us": us,
                                 "weight_bytes": wbytes, "gbs": wbytes / (us * 1e-6) / 1e9,
                                 "tops": 2 * m * n * k / (us * 1e-6) / 1e12, "bw_ref": bw, "relerr": relerr,
                                 "other_load": other})
            if cold and m == 1:
                rows += _cold_rows(name, n, k, threads, llc, bw_dram, min_run_time, cfg)
    for r in rows:
        same = [o for o in rows if o["shape"] == r["shape"] and o["threads"] == r["threads"]]
        fp32 = next((o["us"] for o in same if o["impl"].startswith("fp32")), None)
        bf16 = next((o["us"] for o in same if o["impl"].startswith("bf16")), None)
        r["speedup_fp32"] = fp32 / r["us"] if fp32 else None
        r["speedup_bf16"] = bf16 / r["us"] if bf16 else None
        r["sol_pct"] = 100 * r["gbs"] / r["bw_ref"] if r["m"] <= 8 else None
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "isa": active,
            "available_isas": co.available_isas(), "torch": torch.__version__, "llc_bytes": llc, "notes": notes,
            "shape_set": shape_set, "group_size": GROUP}
    _print(meta, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"int4_linear_{shape_set}"
    report.write_json(out_dir / f"{stem}.json", meta, rows)
    plotted = report.plot_speedups(out_dir / f"{stem}.png", rows, f"int4 linear, {meta['cpu']}, {meta['date']}")
    print(f"\nwrote {out_dir / (stem + '.json')}" + (f" and {stem}.png" if plotted else ""))
    _print_targets(rows)
    return 0


def _cold_rows(name, n, k, threads, llc, bw_dram, min_run_time, cfg):
    """M=1 with weights that cannot stay in the LLC: rotate over enough layer copies."""
    out = []
    x = torch.randn(1, k)
    for impl, build, wbytes in ((f"compressops int4 g{GROUP} ({co.isa()})", lambda lin: Int4Linear.from_float(lin, cfg),
                                 n * k // 2),
                                ("fp32 nn.Linear", lambda lin: lin, 4 * n * k)):
        copies = [build(nn.Linear(k, n)) for _ in range(timing.copies_beyond_cache(wbytes, llc))]

        def call_all(copies=copies):
            for c in copies:
                c(x)

        with torch.inference_mode():
            us, other = _timed(call_all, min_run_time)
            us /= len(copies)
        out.append({"shape": f"{name} cold", "copies": len(copies), "m": 1, "n": n, "k": k, "threads": threads,
                    "impl": impl, "us": us, "weight_bytes": wbytes, "gbs": wbytes / (us * 1e-6) / 1e9,
                    "tops": 2 * n * k / (us * 1e-6) / 1e12, "bw_ref": bw_dram, "other_load": other})
        del copies
    return out


COLUMNS = [("shape", "shape", ""), ("threads", "thr", "d"), ("impl", "implementation", ""),
           ("us", "median us", ".0f"), ("speedup_fp32", "x fp32", ".2f"), ("speedup_bf16", "x bf16", ".2f"),
           ("gbs", "weight GB/s", ".1f"), ("tops", "TOP/s", ".3f"), ("sol_pct", "% SoL", ".0f"),
           ("relerr", "rel. err", ".4f"), ("other_load", "other load", ".2f")]


def _print(meta, rows):
    print(f"# int4 linear benchmark (group {meta['group_size']}), {meta['date']}, {meta['cpu']} "
          f"(compressops ISA {meta['isa']}, torch {meta['torch']}, LLC {meta['llc_bytes'] >> 20} MiB)")
    for note in meta["notes"]:
        print(f"- {note}")
    print("- % SoL (M <= 8): int4 weight bytes / measured read bandwidth (cache-resident when the weight fits in "
          "half the LLC, DRAM otherwise)")
    print("- cold rows: M=1, one call per layer copy over enough copies that their weights total > 3x the LLC")
    busy = [r for r in rows if (r.get("other_load") or 0) > 0.1]
    if busy:
        print(f"- WARNING: {len(busy)} of {len(rows)} rows were timed while other processes were busy "
              f"(up to {max(r['other_load'] for r in busy):.2f} cores); rerun on a quiet machine")
    print("- rel. err: ||y - y_exact|| / ||y_exact|| against the float64 product with the original fp32 weights\n")
    print(report.markdown_table(rows, COLUMNS))


def _print_targets(rows):
    def t(shape, impl, threads=2):
        return next((r["us"] for r in rows if r["shape"] == shape and r["impl"].startswith(impl)
                     and r["threads"] == threads), None)

    print("\nIssue targets (K=N=4096, group 128, 2 threads; measured, not asserted):")
    for m, vs_fp32, vs_ort in ((1, 7.5, 1.2), (64, 9.0, 5.0)):
        shape = f"4096x4096 M={m}"
        ours, fp32, ort = t(shape, "compressops int4"), t(shape, "fp32"), t(shape, "onnxruntime")
        if ours is None or fp32 is None:
            print(f"  M={m}: not measured in this run")
            continue
        checks = [("fp32 nn.Linear", fp32 / ours, vs_fp32)]
        if ort is not None:
            checks.append(("onnxruntime MatMulNBits", ort / ours, vs_ort))
        for label, ratio, target in checks:
            verdict = "PASS" if ratio >= target else "MISS"
            print(f"  M={m}: {ratio:.2f}x faster than {label} (target >= {target}x): {verdict}")
    slower = [r for r in rows if r["impl"].startswith("compressops") and r.get("speedup_bf16") is not None
              and r["speedup_bf16"] < 1.0]
    print("  never slower than bf16 nn.Linear: " + ("PASS" if not slower else
          "MISS at " + ", ".join(f"{r['shape']} {r['threads']} thr ({r['speedup_bf16']:.2f}x)" for r in slower)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="design", choices=sorted(shapes.SETS))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--quick", action="store_true", help="target shapes only, 2 threads, short timing, no cold rows")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--no-cold", action="store_true", help="skip the weights-beyond-cache M=1 rows")
    p.add_argument("--isa", help="force a lower compressops CPU level for the whole run")
    p.add_argument("--out", default="benchmarks/results", help="directory for JSON and PNG")
    a = p.parse_args(argv)
    if a.isa:
        co.set_isa(a.isa)
    shape_set, threads, mrt, cold = a.shapes, [int(t) for t in a.threads.split(",")], a.min_run_time, not a.no_cold
    if a.quick:
        shape_set, threads, mrt, cold = "quick", [2], min(mrt, 0.2), False
    return run(shape_set, threads, mrt, cold, Path(a.out))


if __name__ == "__main__":
    raise SystemExit(main())
