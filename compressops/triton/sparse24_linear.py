"""Triton kernels for compressops::sparse24_linear and sparse24_int8_linear (CUDA): each program
computes a [BM, BN] output tile; per K step it loads the kept values and metadata of BN rows (views
into the pack, compressops/formats/sparse24.py), expands them to a dense [BN, BK] tile in registers
(a position matches one of its group's two kept slots or is zero) and runs tl.dot with fp32 (int32
for int8 values) accumulation. Tested on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import int8 as f8
from ..formats import sparse24 as s24
from ._exact_rows import non_finite_rows, recompute_rows


@triton.jit
def _sparse24_kernel(x_ptr, v_ptr, m_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_v, stride_m,
                     HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        xt = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                     other=0.0).to(tl.float32)
        g = rk // 4  # group of each K position
        pos = rk % 4
        row_ok = (rn[:, None] < N) & (rk[None, :] < K)
        byte = tl.load(m_ptr + rn[:, None] * stride_m + (g // 2)[None, :], mask=row_ok, other=0).to(tl.int32)
        nib = (byte >> (4 * (g % 2))[None, :]) & 15
        p0 = nib & 3
        p1 = (nib >> 2) & 3
        v0 = tl.load(v_ptr + rn[:, None] * stride_v + (2 * g)[None, :], mask=row_ok, other=0.0).to(tl.float32)
        v1 = tl.load(v_ptr + rn[:, None] * stride_v + (2 * g + 1)[None, :], mask=row_ok, other=0.0).to(tl.float32)
        w = tl.where(p0 == pos[None, :], v0, 0.0) + tl.where(p1 == pos[None, :], v1, 0.0)  # [BN, BK]
        acc += tl.dot(xt, tl.trans(w), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def sparse24_linear(x, packed, bias=None, out_dtype=None):
    """Same contract as compressops.ops.sparse24_linear (argument checks: formats.sparse24.check_linear)."""
    n, k, out_t, dtype = s24.check_linear("sparse24_linear", x, packed, bias, out_dtype)
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if m > 0:
        vals, meta_c = s24.views(packed, n, k, dtype)  # row-major views into the pack
        b = bias.float().contiguous() if bias is not None else out
        bm, bn, bk = 16, 32, 32
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _sparse24_kernel[grid](x2, vals, meta_c, b, out, m, n, k, x2.stride(0), vals.stride(0), meta_c.stride(0),
                               HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk)
        # NaN/Inf rows: the dense product on the decoded weight (_exact_rows), whatever tl.dot does with Inf * 0
        recompute_rows(out, x2, non_finite_rows(x2), lambda: s24.decompress(vals, meta_c, k), bias)
    return out.to(out_t).reshape(*x.shape[:-1], n)


@triton.jit
def _sparse24_int8_kernel(q_ptr, v_ptr, m_ptr, out_ptr, M, N, K, stride_qm, stride_v, stride_m,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # The same expansion as _sparse24_kernel on int8 kept values and int8 activations: an exact
    # int32 tl.dot, so the result does not depend on the summation order.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        qt = tl.load(q_ptr + rm[:, None] * stride_qm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                     other=0)
        g = rk // 4
        pos = rk % 4
        row_ok = (rn[:, None] < N) & (rk[None, :] < K)
        byte = tl.load(m_ptr + rn[:, None] * stride_m + (g // 2)[None, :], mask=row_ok, other=0).to(tl.int32)
        nib = (byte >> (4 * (g % 2))[None, :]) & 15
        p0 = nib & 3
        p1 = (nib >> 2) & 3
        v0 = tl.load(v_ptr + rn[:, None] * stride_v + (2 * g)[None, :], mask=row_ok, other=0).to(tl.int32)
        v1 = tl.load(v_ptr + rn[:, None] * stride_v + (2 * g + 1)[None, :], mask=row_ok, other=0).to(tl.int32)
        w = (tl.where(p0 == pos[None, :], v0, 0) + tl.where(p1 == pos[None, :], v1, 0)).to(tl.int8)  # [BN, BK]
        acc += tl.dot(qt, tl.trans(w), out_dtype=tl.int32)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def sparse24_int8_linear(x, packed, w_scale, bias=None, out_dtype=None):
    """Same contract as compressops.ops.sparse24_int8_linear: the checks, the activation quantization
    and the float epilogue are the formats functions the reference calls, so results equal the
    reference bit for bit."""
    n, k, out_t, dtype = s24.check_int8_linear("sparse24_int8_linear", x, packed, w_scale, bias, out_dtype)
    q, sx = f8.quantize_activation(x)
    q2 = q.reshape(-1, k).contiguous()
    m = q2.shape[0]
    acc = torch.zeros(m, n, dtype=torch.int32, device=x.device)
    if m > 0:
        vals, meta_c = s24.views(packed, n, k, dtype)
        bm, bn, bk = 16, 32, 32
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _sparse24_int8_kernel[grid](q2, vals, meta_c, acc, m, n, k, q2.stride(0), vals.stride(0), meta_c.stride(0),
                                    BM=bm, BN=bn, BK=bk)
    return f8.w8a8_epilogue(acc, sx, w_scale, bias, out_t, (*x.shape[:-1], n))
