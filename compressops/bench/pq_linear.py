"""PQ linear benchmark: PQLinear against dense fp32/bf16, Int8Linear, a plain-torch PQ and faiss.

Rows per shape and thread count: compressops PQLinear (k=16 d=4, k=256 d=4, k=256 d=8; fp32 in/out,
table build included) at the active ISA, fp32 and bf16 nn.Linear, compressops Int8Linear (W8A8
dynamic), a plain-torch PQ (table by einsum, then gather-sum; M <= 8 only, its [M, S, N] gather
does not fit memory beyond), and faiss IndexPQFastScan (4-bit codes, d_sub=4) searching the same
N codes as the k=16 d=4 layer -- a speed reference only: it returns the top-1 per row, not y.

The PQ layers use random codes and codebooks (the speed does not depend on their values; fitting
k-means to 4096x4096 weights would dominate the run). rel. err is measured against each row's own
weight: the float64 product with the decoded PQ weight for PQ rows (so k=16 shows the 8-bit table
rounding), with the fp32 weight for the dense and int8 rows. % SoL at M <= 8: each row's weight
bytes over the read bandwidth measured in this run. x best peer: the fastest of int8, plain-torch PQ
and faiss, over the PQ row.
"""

from __future__ import annotations

import torch
from torch import nn

import compressops as co
from compressops.bench import runner
from compressops.bench.linear import Layer, LinearFamily
from compressops.bench.runner import (IMPL, MEDIAN_US, REL_ERR, SHAPE, SOL, THREADS, X_FP32, X_PEER, Impl, Run,
                                      Table, Target)
from compressops.formats import pq as fpq
from compressops.isa import last_kernel_isa
from compressops.nn import Int8Linear, PQLinear

FAMILY = "pq"

PQ_CONFIGS = [(16, 4), (256, 4), (256, 8)]
# k=256 does M*N*S table lookups (vectorized over tiles of up to 16 rows for M >= 2); the design
# shapes (up to M=512, N=11008, S=1024) take well under a second a call
MAX_K256_LOOKUPS = 512 * 11008 * 1024


def random_pq(lin: nn.Linear, k: int, d: int, seed: int = 0) -> PQLinear:
    g = torch.Generator().manual_seed(seed)
    q = PQLinear(lin.in_features, lin.out_features, num_centroids=k, subvector_dim=d)
    s = q.num_subspaces
    codebooks = torch.randn(s, k, d, generator=g) * lin.in_features ** -0.5
    codes = torch.randint(0, k, (lin.out_features, s), generator=g, dtype=torch.uint8)
    q.load_state_dict({"codes": fpq.pack_nibbles(codes) if k == 16 else codes, "codebooks": codebooks,
                       "bias": lin.bias.detach()})
    return q


def plain_torch_pq(q: PQLinear):
    s, k, d = q.codebooks.shape
    idx = fpq.unpacked_codes(q.codes, s, k).long().t().contiguous()  # [S, N]
    cb = q.codebooks.contiguous()

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


def _route_label(active: str):
    """Names the route the first call took in the row's label ("dense" at large M)."""
    def after_call(row):
        row["impl"] = row["impl"].replace(f"({active})", f"({last_kernel_isa('pq_linear') or active})")
    return after_call


class PQBench(LinearFamily):
    name, title, stem = FAMILY, "PQ linear", "pq_linear"
    tables = [Table([SHAPE, THREADS, IMPL, MEDIAN_US, X_FP32, X_PEER, ("weight_bytes", "weight bytes", "d"), SOL,
                     REL_ERR])]
    legend = ["PQ layers: random codes/codebooks; rel. err against each row's own weight (decoded PQ weight for "
              "PQ rows); faiss returns the top-1 only"]

    def impls(self, layer: Layer, run: Run) -> list[Impl]:
        x, (m, n, k), active = layer.x, (layer.m, layer.n, layer.k), co.isa()
        out, pq16 = [], None
        for kc, d in PQ_CONFIGS:
            q = random_pq(layer.lin, kc, d)
            pq16 = q if (kc, d) == (16, 4) else pq16
            if kc == 256 and m * n * q.num_subspaces > MAX_K256_LOOKUPS:
                run.note(f"PQLinear k=256 skipped where M*N*S > {MAX_K256_LOOKUPS} (seconds a call)")
                continue
            out.append(Impl(f"compressops PQ k={kc} d={d} ({active})", (lambda q=q: q(x)), "ours",
                            layer.exact(q.dequantize()), q.compressed_bytes(), after_call=_route_label(active)))
        q8 = Int8Linear.from_float(layer.lin)
        out += [*self.dense(layer), Impl("compressops int8 (W8A8)", lambda: q8(x), "peer", layer.exact(), n * k)]
        if m <= 8:
            f = plain_torch_pq(pq16)
            out.append(Impl("plain torch PQ k=16 d=4 (einsum + gather)", lambda: f(x), "peer",
                            layer.exact(pq16.dequantize()), pq16.compressed_bytes()))
        index, why = faiss_fastscan(pq16, run.threads)
        if why:
            run.note(why)
        if index is not None:
            xn = x.numpy()
            out.append(Impl("faiss IndexPQFastScan k=16 d=4 (top-1 only, no y)", lambda: index.search(xn, 1), "peer",
                            weight_bytes=pq16.compressed_bytes()))
        return out

    def summary(self, rows: list[dict], run: Run) -> None:
        targets = [Target(f"{cfg} M={m}", f"4096x4096 M={m}", cfg, "fp32", "fp32 nn.Linear", ratio)
                   for m, cfg, ratio in ((1, "compressops PQ k=16 d=4", 12), (64, "compressops PQ k=16 d=4", 5),
                                         (1, "compressops PQ k=256 d=4", 4))]
        runner.print_targets(rows, "Issue targets (K=N=4096, 2 threads; measured, not asserted):", targets)


def main(argv=None) -> int:
    return runner.main(PQBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
