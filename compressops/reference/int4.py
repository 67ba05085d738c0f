"""Reference of the int4 ops (format: compressops/formats/int4.py)."""

from __future__ import annotations

import torch

from ..formats import int4 as f4

__all__ = ["int4_pack_weight", "int4_quantize_activation", "int4_linear"]


def int4_pack_weight(qweight, scales, zeros, in_features, group_size):
    """See compressops.ops.int4_pack_weight."""
    return f4.pack_weight(qweight, scales, zeros, in_features, group_size)


def int4_quantize_activation(x: torch.Tensor, group_size: int, k_pad: int | None = None):
    """The W4A8 activation step of int4_linear, per row and group of `group_size` columns.

    amax = max|x| over the group's real columns; scale = amax / 127 (float32 true division);
    q = round_half_even(clamp(x * (127 / amax), -127, 127)). A group whose 127 / amax is not finite
    in float32 (amax 0, or amax below about 3.7e-37) -> scale 0 and q 0; a group holding NaN/Inf ->
    scale NaN, q 0. Columns k..k_pad are q 0.
    Returns (q int8 [M, k_pad], scale float32 [M, G], corr float32 [M, G] = scale * float(sum q)).
    """
    xf = x.reshape(-1, x.shape[-1]).float()
    m, k = xf.shape
    kp = k_pad or f4.padded_k(k, group_size)
    g = kp // group_size
    xp = torch.zeros(m, kp, dtype=torch.float32, device=x.device)
    xp[:, :k] = xf
    xg = xp.view(m, g, group_size)
    amax = xg.abs().amax(dim=-1)
    finite = torch.isfinite(xg).all(dim=-1)
    inv = torch.div(torch.full_like(amax, 127.0), amax)  # inf for amax 0 and for tiny amax
    usable = finite & torch.isfinite(inv)
    inv = torch.where(usable, inv, torch.zeros_like(inv))
    scale = torch.where(usable, torch.div(amax, torch.full_like(amax, 127.0)),
                        torch.where(finite, torch.zeros_like(amax), torch.full_like(amax, float("nan"))))
    v = torch.where(usable.unsqueeze(-1), xg * inv.unsqueeze(-1), torch.zeros_like(xg))
    q = v.clamp(-127.0, 127.0).round()
    corr = torch.where(finite, scale * q.sum(dim=-1), scale)
    return q.to(torch.int8).view(m, kp), scale, corr


def int4_linear(x, w_packed, bias=None, out_dtype=None):
    """W4A8 int4 linear; see compressops.ops.int4_linear and compressops/formats/int4.py.

    y[m, n] = bias[n] + sum_g (acc[m, n, g] * s[n, g] * a_s[m, g] - z[n, g] * s[n, g] * corr[m, g]),
    acc the exact integer dot product of the group, evaluated here in float64 and rounded once;
    z * s is the float32 product the pack holds, as the kernels use it.
    """
    n, _, out_t, _ = f4.check_linear("int4_linear", x, w_packed, bias, out_dtype)
    codes, s, zs, lay = f4.kernel_operands(w_packed, "int4_linear")
    gs = lay.group_size
    q, sa, corr = int4_quantize_activation(x, gs, lay.k_pad)
    m = q.shape[0]
    y = torch.zeros(m, n, dtype=torch.float64, device=x.device)
    qd, wd = q.double(), codes.double()
    for g in range(lay.groups):
        sl = slice(g * gs, (g + 1) * gs)
        acc = qd[:, sl] @ wd[:, sl].t()
        y += acc * (s[:, g].double()[None, :] * sa[:, g].double()[:, None])
        y -= zs[:, g].double()[None, :] * corr[:, g].double()[:, None]
    y = y.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)
