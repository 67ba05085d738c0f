"""Triton (CUDA) kernel of compressops::int4_linear: dequantize the 4-bit codes in registers, tl.dot.

It reads the same pack as the CPU kernels (csrc/common/int4_layout.h): after the 64-byte header,
for each block of 8 output channels and each group, group_size*4 bytes of codes, 8 fp32 scales s,
8 fp32 z*s (the zero points after the body are for unpacking only).
The weight tile is dequantized as q*s - z*s in fp32 and multiplied with the activations in fp32
(tf32 off): weight-only, unlike the CPU's W4A8, so it is at least as close to
x @ dequantize().T as the CPU kernels (tests bound both by the same 2%).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import int4 as f4


@triton.jit
def _int4_linear_kernel(x_ptr, wb_ptr, wf_ptr, b_ptr, y_ptr, M, N, K, G, stride_xm, stride_ym,
                        GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, GS)
    gstride = GS * 4 + 64
    nb = rn // 8
    c = rn % 8
    j = rk // 8
    r = rk % 8
    half = r // 4
    i = r % 4
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for g in range(0, G):
        base = 64 + (nb * G + g) * gstride  # [BN] byte offsets of the (block, group) runs
        byte_off = base[None, :] + (j * 32 + i)[:, None] + (c * 4)[None, :]  # [GS, BN]
        nmask = rn < N
        codes = tl.load(wb_ptr + byte_off, mask=nmask[None, :], other=0).to(tl.int32)
        q = ((codes >> (half * 4)[:, None]) & 15).to(tl.float32)
        s = tl.load(wf_ptr + (base + GS * 4) // 4 + c, mask=nmask, other=0.0)
        zs = tl.load(wf_ptr + (base + GS * 4 + 32) // 4 + c, mask=nmask, other=0.0)
        w = q * s[None, :] - zs[None, :]
        kk = g * GS + rk
        xt = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                     other=0.0).to(tl.float32)
        acc += tl.dot(xt, w, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def int4_linear(x, w_packed, bias=None, out_dtype=None):
    """compressops::int4_linear on a GPU (or under TRITON_INTERPRET=1 on CPU tensors)."""
    # one 64-byte device-to-host copy (the header: N, K and the group size)
    n, k, out_t, lay = f4.check_linear("int4_linear", x, w_packed, bias, out_dtype)
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if m > 0:
        wb = w_packed.view(-1)
        # the floats lie in the body, so a float32 view of the whole words of the pack reaches them
        wf = wb[:wb.numel() // 4 * 4].view(torch.float32)
        b = bias.float().contiguous() if bias is not None else y
        bm, bn = 16, 32
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _int4_linear_kernel[grid](x2, wb, wf, b, y, m, n, k, lay.groups, x2.stride(0), y.stride(0),
                                  GS=lay.group_size, BM=bm, BN=bn, HAS_BIAS=bias is not None)
    return y.to(out_t).reshape(*x.shape[:-1], n)
