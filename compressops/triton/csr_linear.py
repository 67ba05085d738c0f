"""Triton (CUDA) kernel of compressops::csr_linear: one program per (output channel, block of rows).

It reads the same prepacked index blob as the CPU kernels (compressops/formats/csr.py): int64
row pointers and 16-bit (K <= 65536) or 32-bit column indices, with the values alongside. Each
program walks its output channel's nonzeros in chunks, gathers the matching activation columns for
a block of input rows and accumulates value * x in float32, then adds the bias.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from ..formats import csr as csr_format

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


def csr_linear(x, packed, values, out_features, bias=None):
    """compressops::csr_linear on CUDA: x float [..., K] -> [..., N] (see compressops.ops.csr_linear)."""
    op = "csr_linear"
    reference._check_x(x, op)
    h = csr_format.read_header(packed, op)  # one 64-byte device-to-host copy
    n, k, nnz, cb = h["n"], h["k"], h["nnz"], h["col_bytes"]
    if int(out_features) != n:
        raise ValueError(f"{op}: out_features={out_features} but the pack has N={n}")
    if values.dtype not in (torch.float32, torch.bfloat16) or values.dim() != 1 or values.shape[0] != nnz:
        raise ValueError(f"{op}: values must be float32/bfloat16 of shape [nnz] = [{nnz}], got {values.dtype} "
                         f"{tuple(values.shape)}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x has K={x.shape[-1]} in its last dimension but the pack has K={k}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"{op}: bias must be a float tensor of shape [N] = [{n}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")
    off = csr_format.HEADER_BYTES
    rowptr = packed[off:off + 8 * (n + 1)].view(torch.int64)
    off += 8 * (n + 1)
    cols = packed[off:off + cb * nnz].view(torch.int16 if cb == 2 else torch.int32)
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if m and n:
        grid = (n, triton.cdiv(m, BM))
        _csr_linear_kernel[grid](x2, rowptr, cols, values, bias if bias is not None else values, y, m, n,
                                 x2.stride(0), COL16=cb == 2, HAS_BIAS=bias is not None, BM=BM, BJ=BJ)
    return y.to(reference._out_dtype(x, None, op)).reshape(*x.shape[:-1], n)
