"""Triton (CUDA) kernel of compressops::csr_linear: one program per (output channel, block of rows).

It reads the same pack as the CPU kernels (compressops/formats/csr.py): int64 row pointers and
16-bit (K <= 65536) or 32-bit column indices after the shared header, with the values alongside;
check_linear has checked the header, the row pointer and the columns. Each
program walks its output channel's nonzeros in chunks, gathers the matching activation columns for
a block of input rows and accumulates value * x in float32, then adds the bias.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import csr as csr_format
from ._exact_rows import non_finite_rows, recompute_rows

BM, BJ = 16, 32


@triton.jit
def _csr_linear_kernel(x_ptr, rowptr_ptr, col_ptr, val_ptr, b_ptr, y_ptr, M, N, stride_xm,
                       COL16: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr):
    n = tl.program_id(0)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    start = tl.load(rowptr_ptr + n)
    end = tl.load(rowptr_ptr + n + 1)
    acc = tl.zeros((BM,), dtype=tl.float32)
    for j0 in range(start, end, BJ):
        rj = j0 + tl.arange(0, BJ)
        jmask = rj < end
        c = tl.load(col_ptr + rj, mask=jmask, other=0).to(tl.int32)
        if COL16:
            c = c & 0xFFFF  # stored as int16: columns 32768..65535 come back negative
        v = tl.load(val_ptr + rj, mask=jmask, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + rm[:, None] * stride_xm + c[None, :], mask=(rm[:, None] < M) & jmask[None, :],
                     other=0.0).to(tl.float32)
        acc += tl.sum(xv * v[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n).to(tl.float32)
    tl.store(y_ptr + rm * N + n, acc, mask=rm < M)


def csr_linear(x, packed, values, bias=None, out_dtype=None):
    """compressops::csr_linear on CUDA: x float [..., K] -> [..., N] (see compressops.ops.csr_linear)."""
    # three device-to-host syncs: the 64-byte header, the row pointer check and the column check
    n, k, out_t, h = csr_format.check_linear("csr_linear", x, packed, values, bias, out_dtype)
    rowptr, cols = csr_format.index_views(packed, h)
    cols_k = cols
    if h.col_bytes == 2:
        cols = cols.view(torch.int16)  # the kernel masks each column back to its unsigned 16 bits
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if m and n:
        grid = (n, triton.cdiv(m, BM))
        _csr_linear_kernel[grid](x2, rowptr, cols, values, bias if bias is not None else values, y, m, n,
                                 x2.stride(0), COL16=h.col_bytes == 2, HAS_BIAS=bias is not None, BM=BM, BJ=BJ)
        # the kernel skips the zeros an Inf in x would meet: NaN/Inf rows go to the dense product (_exact_rows)
        recompute_rows(y, x2, non_finite_rows(x2), lambda: csr_format.to_dense(rowptr, cols_k, values, k), bias)
    return y.to(out_t).reshape(*x.shape[:-1], n)
