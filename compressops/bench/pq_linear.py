"""PQ linear benchmark: PQLinear against dense fp32/bf16, Int8Linear, a plain-torch PQ and faiss.

Rows per shape and thread count: compressops PQLinear (k=16 d=4, k=256 d=4, k=256 d=8; fp32 in/out,
table build included) at the active ISA, fp32 and bf16 nn.Linear, compressops Int8Linear (W8A8
dynamic), a plain-torch PQ (table by einsum, then gather-sum; M <= 8 only, its [M, S, N] gather
does not fit memory beyond), and faiss IndexPQFastScan (4-bit codes, d_sub=4) searching the same
N codes as the k=16 d=4 layer -- a speed reference only: it returns the top-1 per row, not y.

The PQ layers use random codes and codebooks (the speed does not depend on their values; fitting
k-means to 4096x4096 weights would dominate the run). rel. err is measured against each row's own
weight: the float64 product with the decoded PQ weight for PQ rows (so k=16 shows the 8-bit table
rounding), with the fp32 weight for the dense and int8 rows.
"""

from __future__ import annotations

import argparse
import copy
import datetime
from pathlib import Path

import torch
from torch import nn

import compressops as co
from compressops.isa import last_kernel_isa
from compressops.bench import report, shapes, timing
from compressops.formats import pq as fpq
from compressops.info import cpu_model
from compressops.nn import Int8Linear, PQLinear

PQ_CONFIGS = [(16, 4), (256, 4), (256, 8)]
# k=256 does M*N*S table lookups (vectorized over tiles of up to 16 rows for M >= 2); the design
# shapes (up to M=512, N=11008, S=1024) take well under a second a call
MAX_K256_LOOKUPS = 512 * 11008 * 1024


def random_pq(lin: nn.Linear, k: int, d: int, seed: int = 0) -> PQLinear:
    g = torch.Generator().manual_seed(seed)
    q = PQLinear(lin.in_features, lin.out_features, num_centroids=k, subvector_dim=d)
    s = q.num_subspaces
    q.codebooks.copy_(torch.randn(s, k, d, generator=g) * lin.in_features ** -0.5)
    codes = torch.randint(0, k, (lin.out_features, s), generator=g, dtype=torch.uint8)
    q.codes.copy_(fpq.pack_nibbles(codes) if k == 16 else codes)
    q.bias.copy_(lin.bias.detach())
    q.repack()
    return q


def plain_torch_pq(q: PQLinear):
    s, k, d = q.codebooks.shape
    idx = fpq.unpacked_codes(q.codes, s, k).long().t().contiguous()  # [S, N]
    cb = q.codebooks

    def fn(x):
        xp = torch.nn.functional.pad(x, (0, s * d - x.shape[-1])).view(x.shape[0], s, d)
        tab = torch.einsum("msd,scd->msc", xp, cb)
        return torch.gather(tab, 2, idx[None].expand(x.shape[0], s, idx.shape[1])).sum(1) + q.bias

    return fn


def faiss_fastscan(q: PQLinear, threads: int):
    """(search fn over the same codes, None) or (None, reason)."""
    try:
        import faiss
    except ImportError as e:
        return None, f"faiss row skipped: {e}"
    s, k, d = q.codebooks.shape
    if k != 16 or s * d != q.in_features:
        return None, "faiss row needs k=16 and K a multiple of d"
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexPQFastScan(q.in_features, s, 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(q.codebooks.reshape(-1).numpy(), index.pq.centroids)
    index.is_trained = True
    index.add(q.dequantize().numpy())  # decoded rows re-encode to exactly our codes
    return index, None


def run(shape_set: str, threads_list: list[int], min_run_time: float, out_dir: Path) -> int:
    torch.manual_seed(0)
    rows, notes = [], []
    active = co.isa()
    for threads in threads_list:
        torch.set_num_threads(threads)
        for name, m, n, k in shapes.SETS[shape_set]:
            lin = nn.Linear(k, n)
            lin_bf16 = copy.deepcopy(lin).to(torch.bfloat16)
            x = torch.randn(m, k)
            xb = x.bfloat16()
            impls = []  # (label, fn, exact weight, weight bytes)
            pq16 = None
            for kc, d in PQ_CONFIGS:
                q = random_pq(lin, kc, d)
                if kc == 16 and d == 4:
                    pq16 = q
                if kc == 256 and m * n * q.num_subspaces > MAX_K256_LOOKUPS:
                    note = f"PQLinear k=256 skipped where M*N*S > {MAX_K256_LOOKUPS} (seconds a call)"
                    if note not in notes:
                        notes.append(note)
                    continue
                impls.append((f"compressops PQ k={kc} d={d} ({active})", (lambda q=q: q(x)), q.dequantize(),
                              q.compressed_bytes()))
            impls += [("fp32 nn.Linear", lambda: lin(x), lin.weight, 4 * n * k),
                      ("bf16 nn.Linear", lambda: lin_bf16(xb), lin.weight, 2 * n * k)]
            q8 = Int8Linear.from_float(lin)
            impls.append(("compressops int8 (W8A8)", lambda: q8(x), lin.weight, n * k))
            if m <= 8:
                f = plain_torch_pq(pq16)
                impls.append(("plain torch PQ k=16 d=4 (einsum + gather)", lambda: f(x), pq16.dequantize(),
                              pq16.compressed_bytes()))
            index, why = faiss_fastscan(pq16, threads)
            if why and why not in notes:
                notes.append(why)
            with torch.inference_mode():
                for impl, fn, w, wbytes in impls:
                    exact = x.double() @ w.detach().double().t() + lin.bias.double()
                    y = fn()
                    if impl.startswith("compressops PQ"):  # name the route that ran ("dense" at large M)
                        impl = impl.replace(f"({active})", f"({last_kernel_isa('pq_linear') or active})")
                    relerr = ((y.double() - exact).norm() / exact.norm()).item()
                    us = timing.median_us(fn, min_run_time)
                    rows.append({"shape": name, "m": m, "n": n, "k": k, "threads": threads, "impl": impl, "us": us,
                                 "weight_bytes": wbytes, "relerr": relerr})
            if index is not None:
                xn = x.numpy()
                us = timing.median_us(lambda: index.search(xn, 1), min_run_time)
                rows.append({"shape": name, "m": m, "n": n, "k": k, "threads": threads,
                             "impl": "faiss IndexPQFastScan k=16 d=4 (top-1 only, no y)", "us": us,
                             "weight_bytes": pq16.compressed_bytes(), "relerr": None})
    for r in rows:
        fp32 = next((o["us"] for o in rows if o["shape"] == r["shape"] and o["threads"] == r["threads"]
                     and o["impl"] == "fp32 nn.Linear"), None)
        r["speedup_fp32"] = fp32 / r["us"] if fp32 else None
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "isa": active,
            "torch": torch.__version__, "notes": notes, "shape_set": shape_set}
    print(f"# PQ linear benchmark, {meta['date']}, {meta['cpu']} (compressops ISA {active}, torch {meta['torch']})")
    for note in notes:
        print(f"- {note}")
    print("- PQ layers: random codes/codebooks; rel. err against each row's own weight (decoded PQ weight for "
          "PQ rows); faiss returns the top-1 only\n")
    cols = [("shape", "shape", ""), ("threads", "thr", "d"), ("impl", "implementation", ""),
            ("us", "median us", ".0f"), ("speedup_fp32", "x fp32", ".2f"), ("weight_bytes", "weight bytes", "d"),
            ("relerr", "rel. err", ".4f")]
    print(report.markdown_table(rows, cols))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"pq_linear_{shape_set}"
    report.write_json(out_dir / f"{stem}.json", meta, rows)
    print(f"\nwrote {out_dir / (stem + '.json')}")

    def t(shape, impl):
        return next((r["us"] for r in rows if r["shape"] == shape and r["impl"].startswith(impl)
                     and r["threads"] == 2), None)

    print("\nIssue targets (K=N=4096, 2 threads; measured, not asserted):")
    for m, cfg, target in ((1, "compressops PQ k=16 d=4", 12), (64, "compressops PQ k=16 d=4", 5),
                           (1, "compressops PQ k=256 d=4", 4)):
        shape = f"4096x4096 M={m}"
        ours, fp32 = t(shape, cfg), t(shape, "fp32")
        if None in (ours, fp32):
            print(f"  {cfg} M={m}: not measured in this run")
            continue
        print(f"  {cfg} M={m}: {fp32 / ours:.2f}x faster than fp32 nn.Linear (target >= {target}x): "
              f"{'PASS' if fp32 / ours >= target else 'MISS'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="design", choices=sorted(shapes.SETS))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--quick", action="store_true", help="target shapes only, 2 threads, short timing")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    p.add_argument("--isa", help="force a lower compressops CPU level for the whole run")
    p.add_argument("--out", default="benchmarks/results", help="directory for the JSON")
    a = p.parse_args(argv)
    if a.isa:
        co.set_isa(a.isa)
    shape_set, threads, mrt = a.shapes, [int(t) for t in a.threads.split(",")], a.min_run_time
    if a.quick:
        shape_set, threads, mrt = "quick", [2], min(mrt, 0.2)
    return run(shape_set, threads, mrt, Path(a.out))


if __name__ == "__main__":
    raise SystemExit(main())
