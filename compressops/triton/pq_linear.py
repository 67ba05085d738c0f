"""Triton pq_linear (CUDA): y[m, n] = sum_s x[m, s] . C[s, code(n, s)] + bias[n].

Reads the same pack as the CPU kernels (compressops/formats/pq.py): after the shared header, the
transposed codebooks [S_pad][d][k] and the blocked codes. Each program handles one input row and BLOCK_N
output rows and decodes the weight on the fly (d loads and d FMAs per code, fp32 accumulation),
so it is exact up to fp32 rounding (no table quantization). A first, simple GPU kernel: no shared
memory tables, no tensor cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import pq as fpq
from ._exact_rows import recompute_rows


@triton.jit
def _pq_linear_kernel(x_ptr, cb_ptr, codes_ptr, bias_ptr, y_ptr, N, S, N_PAD, stride_xm, stride_ym,
                      D: tl.constexpr, NCENT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    m = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(0, S):
        if NCENT == 16:
            s_pairs = (S + 1) // 2
            byte = tl.load(codes_ptr + (n // 32) * s_pairs * 32 + (s // 2) * 32 + n % 32, mask=nmask, other=0)
            code = (byte.to(tl.int32) >> (4 * (s % 2))) & 15
        else:
            chunk = s // 16
            sc = tl.minimum(16, S - chunk * 16)
            addr = chunk * 16 * N_PAD + (n // 8) * sc * 8 + (s % 16) * 8 + n % 8
            code = tl.load(codes_ptr + addr, mask=nmask, other=0).to(tl.int32)
        for j in tl.static_range(D):
            xv = tl.load(x_ptr + m * stride_xm + s * D + j)
            w = tl.load(cb_ptr + (s * D + j) * NCENT + code, mask=nmask, other=0.0)
            acc += xv * w
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=nmask, other=0.0)
    tl.store(y_ptr + m * stride_ym + n, acc, mask=nmask)


def pq_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """compressops.ops.pq_linear on a Triton device (or CPU tensors under TRITON_INTERPRET=1)."""
    n, k_in, out_t, h = fpq.check_linear("pq_linear", x, packed, bias, out_dtype)
    x2 = x.reshape(-1, k_in)
    m = x2.shape[0]
    xp = torch.zeros(m, h.s_pad * h.d, dtype=torch.float32, device=x.device)
    xp[:, :k_in] = x2
    cb, codes = fpq.layout_views(packed, h)
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    b = bias.float().contiguous() if bias is not None else y
    if m > 0:
        block_n = 32
        grid = (m, triton.cdiv(n, block_n))
        _pq_linear_kernel[grid](xp, cb, codes, b, y, n, h.s, h.n_pad, xp.stride(0), y.stride(0), D=h.d, NCENT=h.k,
                                HAS_BIAS=bias is not None, BLOCK_N=block_n)
        # Rows whose float32 sums could overflow (or hold NaN/Inf from x) in float64, as the reference's
        # tables: |sum| <= K * max|x_row| * max|c|, so the kernel's rows below that bound are safe.
        reach = x2.abs().amax(dim=1).float() * cb.abs().amax().float() * k_in
        recompute_rows(y, x2, ~torch.isfinite(reach), lambda: fpq.dense_weight("pq_linear", packed), bias,
                       torch.float64)
    return y.to(out_t).reshape(*x.shape[:-1], n)
