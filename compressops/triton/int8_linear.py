"""Triton (CUDA) kernels of compressops::int8_linear and compressops::int8_weight_only_linear.

Both read the same pack as the CPU kernels (compressops/formats/int8.py): after the 64-byte shared
header, int8 weights [N_pad/16][K_pad/4][16][4], zero padded, at byte offsets from the start of the
contiguous pack. The Triton kernel computes only the matrix product (int8 x int8 -> exact int32 for
W8A8; fp32 x dequantized weight for weight-only); the argument checks, the activation quantization
and the float epilogue are the functions of compressops/formats/int8.py that the reference calls
too, so W8A8 results equal compressops.reference.int8_linear bit for bit (the int32 sums are exact
in any order, and the epilogue is the same sequence of float32 operations).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import int8 as f8

BM, BN, BK = 32, 32, 32


@triton.jit
def _packed_weight_offsets(rk, rn, KP4):
    # byte of (n, k) in the pack: 64 + ((n // 16 * K_pad/4 + k // 4) * 16 + n % 16) * 4 + k % 4
    off = 64 + (((rn // 16)[None, :] * KP4 + (rk // 4)[:, None]) * 16 + (rn % 16)[None, :]) * 4 + (rk % 4)[:, None]
    return off


@triton.jit
def _int8_mm_kernel(q_ptr, w_ptr, out_ptr, M, N, K, KP4, NP, stride_qm,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(q_ptr + rm[:, None] * stride_qm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)
        off = _packed_weight_offsets(rk, rn, KP4)
        b = tl.load(w_ptr + off, mask=(rk[:, None] < K) & (rn[None, :] < NP), other=0).to(tl.int8, bitcast=True)
        acc += tl.dot(a, b, out_dtype=tl.int32)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _f32_mm_kernel(x_ptr, w_ptr, out_ptr, M, N, K, KP4, NP, stride_xm,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0.0).to(tl.float32)
        off = _packed_weight_offsets(rk, rn, KP4)
        b = tl.load(w_ptr + off, mask=(rk[:, None] < K) & (rn[None, :] < NP), other=0).to(tl.int8, bitcast=True)
        acc += tl.dot(a, b.to(tl.float32), input_precision="ieee")
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def _shapes(op, x, w_packed, w_scale, bias, out_dtype, act_scale=None):
    """The op's argument checks (one 64-byte header read and its size checks), then (n, k, n_pad, k_pad, out dtype)."""
    n, k, out_t = f8.check_linear(op, x, w_packed, w_scale, bias, out_dtype, act_scale)
    return n, k, -(-n // f8.NR) * f8.NR, -(-k // f8.KR) * f8.KR, out_t


def _launch(kernel, a, w_packed, out, n, k, n_pad, k_pad):
    m = a.shape[0]
    grid = (triton.cdiv(m, BM), triton.cdiv(n, BN))
    kernel[grid](a, w_packed, out, m, n, k, k_pad // f8.KR, n_pad, a.stride(0), BM=BM, BN=BN, BK=BK)


def int8_linear(x, w_packed, w_scale, bias=None, out_dtype=None, *, act_scale=None):
    """compressops::int8_linear on CUDA: x float [..., K] -> [..., N] (see compressops.ops.int8_linear)."""
    n, k, n_pad, k_pad, out_t = _shapes("int8_linear", x, w_packed, w_scale, bias, out_dtype, act_scale)
    q, sx = f8.quantize_activation(x, act_scale)
    q2 = q.reshape(-1, k).contiguous()
    acc = torch.empty(q2.shape[0], n, dtype=torch.int32, device=x.device)
    if q2.shape[0] and n:
        _launch(_int8_mm_kernel, q2, w_packed, acc, n, k, n_pad, k_pad)
    else:
        acc.zero_()
    return f8.w8a8_epilogue(acc, sx, w_scale, bias, out_t, (*x.shape[:-1], n))


def int8_weight_only_linear(x, w_packed, w_scale, bias=None, out_dtype=None):
    """compressops::int8_weight_only_linear on CUDA: (x @ w_q.T) * w_scale + bias in float32."""
    n, k, n_pad, k_pad, out_t = _shapes("int8_weight_only_linear", x, w_packed, w_scale, bias, out_dtype)
    x2 = x.reshape(-1, k).contiguous()
    acc = torch.empty(x2.shape[0], n, dtype=torch.float32, device=x.device)
    if x2.shape[0] and n:
        _launch(_f32_mm_kernel, x2, w_packed, acc, n, k, n_pad, k_pad)
    else:
        acc.zero_()
    y = acc * w_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)
