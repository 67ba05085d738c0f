"""Pure-PyTorch definition of every compressops op: the spec, the fallback kernel, the test oracle.

Each function takes the op's arguments and computes in float32/int32/float64 with plain torch.
Integer accumulations are done in float64, which is exact for every product sum these formats
allow (|sum| < 2^53). Kernels must match these functions bit for bit on integer paths.
"""

from __future__ import annotations

import torch

from .formats import int8 as int8_format
from .formats import int4 as int4_format

_FLOAT_OUT = (torch.float32, torch.bfloat16, torch.float16)


def _check_x(x: torch.Tensor, op: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension (..., K)")


def _check_scale_bias(w_scale, bias, n, op):
    if w_scale.dtype != torch.float32 or w_scale.dim() != 1 or w_scale.shape[0] != n:
        raise ValueError(f"{op}: w_scale must be float32 of shape [N] = [{n}], got {w_scale.dtype} "
                         f"{tuple(w_scale.shape)}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"{op}: bias must be a float tensor of shape [N] = [{n}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")


def _out_dtype(x, out_dtype, op):
    t = out_dtype or x.dtype
    if t not in _FLOAT_OUT:
        raise ValueError(f"{op}: out_dtype must be float32, bfloat16 or float16, got {t}")
    return t


def int8_pack_weight(w_q: torch.Tensor) -> torch.Tensor:
    """See compressops.ops.int8_pack_weight."""
    return int8_format.pack_weight(w_q)


def int8_quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | None = None):
    """Symmetric int8 quantization of the rows of x (last dimension).

    Dynamic (act_scale None), per row: amax = max|x|; scale = amax / 127;
    q = round_half_even(clamp(x * (127 / amax), -127, 127)). A row with amax 0 gets scale 0 and
    q 0; a row holding NaN/Inf gets scale NaN and q 0 (so its linear output is NaN).
    Static: q = round_half_even(clamp(x * (1 / act_scale), -127, 127)), NaN -> 0, and every
    row's scale is act_scale.
    All arithmetic in float32, divisions as true divisions (not reciprocal multiplies).

    Returns:
        (q int8 shaped like x, scale float32 shaped x.shape[:-1]).
    """
    op = "int8_quantize_activation"
    _check_x(x, op)
    xf = x.float()
    if act_scale is None:
        if x.shape[-1] == 0:
            return torch.zeros_like(xf, dtype=torch.int8), xf.new_zeros(x.shape[:-1])
        amax = xf.abs().amax(dim=-1)
        finite = torch.isfinite(amax)
        usable = finite & (amax > 0)
        safe = torch.where(usable, amax, torch.ones_like(amax))
        scale = torch.where(finite, torch.div(amax, torch.full_like(amax, 127.0)),
                            torch.full_like(amax, float("nan")))
        inv = torch.where(usable, torch.div(torch.full_like(safe, 127.0), safe), torch.zeros_like(safe))
        v = xf * inv.unsqueeze(-1)
        v = torch.where(usable.unsqueeze(-1), v, torch.zeros_like(v))
    else:
        s = _check_act_scale(act_scale, op)
        inv = torch.div(torch.ones_like(s), s)
        v = xf * inv
        scale = s.expand(x.shape[:-1]).clone()
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    q = v.clamp(-127.0, 127.0).round().to(torch.int8)
    return q, scale


def _check_act_scale(act_scale, op):
    if act_scale.numel() != 1 or not act_scale.is_floating_point():
        raise ValueError(f"{op}: act_scale must be a one-element float tensor, got {act_scale.dtype} "
                         f"{tuple(act_scale.shape)}")
    s = act_scale.detach().float().reshape(())
    if not (torch.isfinite(s) and s > 0):
        raise ValueError(f"{op}: act_scale must be finite and positive, got {float(s)}")
    return s


def _check_linear(op, x, w_packed, w_scale, bias, out_dtype):
    """Checks shared by the int8 linear ops; returns (N, K, output dtype)."""
    _check_x(x, op)
    h = int8_format.read_header(w_packed, op)
    n, k = h["n"], h["k"]
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x has K={x.shape[-1]} in its last dimension but the weight has K={k}")
    _check_scale_bias(w_scale, bias, n, op)
    return n, k, _out_dtype(x, out_dtype, op)


def int8_linear(x, w_packed, w_scale, bias=None, act_scale=None, out_dtype=None):
    """y = float(q(x) @ w_q.T) * (x_scale * w_scale) + bias; see compressops.ops.int8_linear."""
    n, k, out_t = _check_linear("int8_linear", x, w_packed, w_scale, bias, out_dtype)
    w_q = int8_format.unpack_weight(w_packed)
    q, sx = int8_quantize_activation(x, act_scale)
    acc = (q.reshape(-1, k).double() @ w_q.double().t()).to(torch.int32)
    y = acc.float() * (sx.reshape(-1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


def int8_weight_only_linear(x, w_packed, w_scale, bias=None, out_dtype=None):
    """y = (x @ w_q.T) * w_scale + bias in float32; see compressops.ops.int8_weight_only_linear."""
    n, k, out_t = _check_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, out_dtype)
    w_q = int8_format.unpack_weight(w_packed)
    y = (x.reshape(-1, k).float() @ w_q.float().t()) * w_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


# [int4 reference]
def int4_pack_weight(qweight, scales, zeros, in_features, group_size):
    """See compressops.ops.int4_pack_weight."""
    return int4_format.pack_weight(qweight, scales, zeros, in_features, group_size)


def int4_quantize_activation(x: torch.Tensor, group_size: int, k_pad: int | None = None):
    """The W4A8 activation step of int4_linear, per row and group of `group_size` columns.

    amax = max|x| over the group's real columns; scale = amax / 127 (float32 true division);
    q = round_half_even(clamp(x * (127 / amax), -127, 127)). amax 0 -> scale 0 and q 0; a group
    holding NaN/Inf -> scale NaN, q 0. Columns k..k_pad are q 0.
    Returns (q int8 [M, k_pad], scale float32 [M, G], corr float32 [M, G] = scale * float(sum q)).
    """
    xf = x.reshape(-1, x.shape[-1]).float()
    m, k = xf.shape
    kp = k_pad or int4_format.padded_k(k, group_size)
    g = kp // group_size
    xp = torch.zeros(m, kp, dtype=torch.float32, device=x.device)
    xp[:, :k] = xf
    xg = xp.view(m, g, group_size)
    amax = xg.abs().amax(dim=-1)
    finite = torch.isfinite(xg).all(dim=-1)
    usable = finite & (amax > 0)
    safe = torch.where(usable, amax, torch.ones_like(amax))
    scale = torch.where(finite, torch.div(amax, torch.full_like(amax, 127.0)), torch.full_like(amax, float("nan")))
    inv = torch.where(usable, torch.div(torch.full_like(safe, 127.0), safe), torch.zeros_like(safe))
    v = torch.where(usable.unsqueeze(-1), xg * inv.unsqueeze(-1), torch.zeros_like(xg))
    q = v.clamp(-127.0, 127.0).round()
    corr = torch.where(finite, scale * q.sum(dim=-1), scale)
    return q.to(torch.int8).view(m, kp), scale, corr


def int4_linear(x, w_packed, out_features, bias=None, out_dtype=None):
    """W4A8 int4 linear; see compressops.ops.int4_linear and compressops/formats/int4.py.

    y[m, n] = bias[n] + sum_g (acc[m, n, g] * s[n, g] * a_s[m, g] - z[n, g] * s[n, g] * corr[m, g]),
    acc the exact integer dot product of the group, evaluated here in float64 and rounded once.
    """
    op = "int4_linear"
    _check_x(x, op)
    codes, s, zs, h = int4_format.unpack_weight(w_packed)
    n, k, gs = h["n"], h["k"], h["group_size"]
    if out_features != n:
        raise ValueError(f"{op}: out_features={out_features} but w_packed holds N={n}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x has K={x.shape[-1]} in its last dimension but the weight has K={k}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"{op}: bias must be a float tensor of shape [N] = [{n}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")
    out_t = _out_dtype(x, out_dtype, op)
    q, sa, corr = int4_quantize_activation(x, gs, h["k_pad"])
    m = q.shape[0]
    y = torch.zeros(m, n, dtype=torch.float64, device=x.device)
    qd, wd = q.double(), codes.double()
    for g in range(h["groups"]):
        sl = slice(g * gs, (g + 1) * gs)
        acc = qd[:, sl] @ wd[:, sl].t()
        y += acc * (s[:, g].double()[None, :] * sa[:, g].double()[:, None])
        y -= zs[:, g].double()[None, :] * corr[:, g].double()[:, None]
    y = y.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


# [sparse reference]
def _check_sparse24(op, x, values, meta, in_features, bias, int8=False):
    _check_x(x, op)
    from .formats import sparse24 as s24

    k = int(in_features)
    if k < 1 or (int8 and k > 262144):
        raise ValueError(f"{op}: in_features must be >= 1 (and <= 262144 for int8 values: exact int32 sums), "
                         f"got {k}")
    want = (torch.int8,) if int8 else (torch.float32, torch.bfloat16)
    if values.dtype not in want or values.dim() != 2 or values.shape[1] != s24.padded_k(k) // 2:
        raise ValueError(f"{op}: values must be {'/'.join(str(t) for t in want)} of shape [N, {s24.padded_k(k) // 2}] "
                         f"for in_features={k}, got {values.dtype} {tuple(values.shape)}")
    n = values.shape[0]
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (n, s24.meta_bytes(k)):
        raise ValueError(f"{op}: meta must be uint8 of shape [N, {s24.meta_bytes(k)}] = [{n}, {s24.meta_bytes(k)}], "
                         f"got {meta.dtype} {tuple(meta.shape)}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x has K={x.shape[-1]} in its last dimension but in_features={k}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"{op}: bias must be a float tensor of shape [N] = [{n}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")
    return n, k, _out_dtype(x, None, op)


def sparse24_linear(x, values, meta, in_features, bias=None):
    """y = x @ W.T + bias with W the dense form of the 2:4 (values, meta); float32 accumulation."""
    from .formats import sparse24 as s24

    n, k, out_t = _check_sparse24("sparse24_linear", x, values, meta, in_features, bias)
    w = s24.decompress(values, meta, k, torch.float32)
    y = x.reshape(-1, k).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


def sparse24_int8_linear(x, values, meta, w_scale, in_features, bias=None):
    """2:4 with int8 kept values: y = float(q(x) @ Wq.T) * (x_scale * w_scale) + bias.

    q(x) is int8_quantize_activation (dynamic, per row); the integer sum is exact (int32).
    """
    from .formats import sparse24 as s24

    op = "sparse24_int8_linear"
    n, k, out_t = _check_sparse24(op, x, values, meta, in_features, bias, int8=True)
    if w_scale.dtype != torch.float32 or w_scale.dim() != 1 or w_scale.shape[0] != n:
        raise ValueError(f"{op}: w_scale must be float32 of shape [N] = [{n}], got {w_scale.dtype} "
                         f"{tuple(w_scale.shape)}")
    w = s24.decompress(values, meta, k, torch.float64)
    q, sx = int8_quantize_activation(x)
    acc = (q.reshape(-1, k).double() @ w.t()).to(torch.int32)
    y = acc.float() * (sx.reshape(-1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


def csr_pack(crow, col, in_features):
    """See compressops.ops.csr_pack."""
    from .formats import csr

    return csr.pack(crow, col, int(in_features))


def csr_linear(x, packed, values, out_features, bias=None):
    """y = x @ W.T + bias, W the dense form of the CSR (packed index, values); float32 accumulation."""
    from .formats import csr

    op = "csr_linear"
    _check_x(x, op)
    h = csr.read_header(packed, op)
    n, k, nnz = h["n"], h["k"], h["nnz"]
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
    out_t = _out_dtype(x, None, op)
    crow, col, _ = csr.unpack(packed)
    w = csr.to_dense(crow, col, values, k, torch.float32)
    y = x.reshape(-1, k).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


# [pq reference]
def pq_pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """See compressops.ops.pq_pack."""
    from .formats import pq as pq_format

    return pq_format.pack(codes, codebooks, in_features)


def pq_tables(x: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """float64 lookup tables L[m, s, c] = x_m[s*d:(s+1)*d] . C[s, c] for x (..., K) -> [M, S, k]."""
    s, _, d = codebooks.shape
    x2 = x.reshape(-1, in_features).double()
    xp = x2.new_zeros(x2.shape[0], s * d)
    xp[:, :in_features] = x2
    return torch.einsum("msd,scd->msc", xp.view(-1, s, d), codebooks.double())


def pq_linear(x, packed, in_features, out_features, bias=None, out_dtype=None):
    """y[n] = sum_s L[s, code(n, s)] + bias[n] with the exact table; see compressops.ops.pq_linear."""
    from .formats import pq as pq_format

    op = "pq_linear"
    _check_x(x, op)
    codes, codebooks, k_in = pq_format.unpack(packed, op)
    n = codes.shape[0]
    if k_in != in_features or n != out_features:
        raise ValueError(f"{op}: packed holds a [{n}, {k_in}] layer but in_features={in_features}, "
                         f"out_features={out_features}")
    if x.shape[-1] != in_features:
        raise ValueError(f"{op}: x has K={x.shape[-1]} in its last dimension but the layer has K={in_features}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"{op}: bias must be a float tensor of shape [N] = [{n}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")
    out_t = _out_dtype(x, out_dtype, op)
    tab = pq_tables(x, codebooks, in_features)  # [M, S, k]
    s = codebooks.shape[0]
    idx = codes.long().t()  # [S, N]
    y = torch.gather(tab, 2, idx[None].expand(tab.shape[0], s, n)).sum(1)  # [M, N]
    if bias is not None:
        y = y + bias.double()
    return y.float().to(out_t).reshape(*x.shape[:-1], n)


# [binary reference]

def _binary_check_common(op, x_packed, w_packed, alpha, bias, c, w_dims):
    from .formats import binary as binary_format

    cw = binary_format.words(c) if c >= 1 else 0
    if c < 1:
        raise ValueError(f"{op}: in_channels/in_features must be >= 1, got {c}")
    if x_packed.dtype != torch.int64 or x_packed.shape[-1] != cw:
        raise ValueError(f"{op}: x_packed must be int64 with last dimension ceil(C/64) = {cw}, got "
                         f"{x_packed.dtype} {tuple(x_packed.shape)}")
    if w_packed.dtype != torch.int64 or w_packed.dim() != w_dims or w_packed.shape[-1] != cw:
        raise ValueError(f"{op}: w_packed must be int64 {w_dims}-D with last dimension {cw}, got "
                         f"{w_packed.dtype} {tuple(w_packed.shape)}")
    oc = w_packed.shape[0]
    if alpha.dtype != torch.float32 or alpha.dim() != 1 or alpha.shape[0] != oc:
        raise ValueError(f"{op}: alpha must be float32 of shape [{oc}], got {alpha.dtype} {tuple(alpha.shape)}")
    if bias is not None and (not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != oc):
        raise ValueError(f"{op}: bias must be a float tensor of shape [{oc}], got {bias.dtype} "
                         f"{tuple(bias.shape)}")


def _binary_epilogue(acc, alpha, bias, clamp_min, clamp_max, channel_dim):
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.float() * alpha.reshape(shape)
    if bias is not None:
        y = y + bias.float().reshape(shape)
    if clamp_min is not None:
        y = torch.clamp_min(y, clamp_min)
    if clamp_max is not None:
        y = torch.clamp_max(y, clamp_max)
    return y


def binary_pack_activation(x: torch.Tensor) -> torch.Tensor:
    """Sign-and-pack (x >= 0 -> bit 1): 4-D NCHW x -> int64 [N, H, W, ceil(C/64)]; any other rank
    packs the last dimension, (..., C) -> (..., ceil(C/64)). Layout: compressops/formats/binary.py."""
    from .formats import binary as binary_format

    op = "binary_pack_activation"
    _check_x(x, op)
    if x.dim() == 4:
        if x.shape[1] < 1:
            raise ValueError(f"{op}: x must have at least one channel, got shape {tuple(x.shape)}")
        return binary_format.pack_bits(x.permute(0, 2, 3, 1)).contiguous()
    if x.shape[-1] < 1:
        raise ValueError(f"{op}: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    return binary_format.pack_bits(x).contiguous()


def binary_conv2d(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding,
                  clamp_min=None, clamp_max=None):
    """conv2d(sign(x), sign(w), zero padding) * alpha + bias, optionally clamped; float32 NCHW.

    x_packed int64 [N, H, W, CW] (from binary_pack_activation), w_packed int64 [OC, KH, KW, CW].
    The integer part is computed exactly in float64 (padded taps contribute 0).
    """
    from .formats import binary as binary_format

    op = "binary_conv2d"
    _binary_check_common(op, x_packed, w_packed, alpha, bias, in_channels, 4)
    if x_packed.dim() != 4:
        raise ValueError(f"{op}: x_packed must be 4-D [N, H, W, CW], got {tuple(x_packed.shape)}")
    kh, kw = kernel_size
    if tuple(w_packed.shape[1:3]) != (kh, kw):
        raise ValueError(f"{op}: w_packed has taps {tuple(w_packed.shape[1:3])} but kernel_size is {(kh, kw)}")
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    xs = binary_format.unpack_bits(x_packed, in_channels, torch.float64).permute(0, 3, 1, 2)
    ws = binary_format.unpack_bits(w_packed, in_channels, torch.float64).permute(0, 3, 1, 2)
    acc = torch.nn.functional.conv2d(xs, ws, stride=tuple(stride), padding=tuple(padding))
    return _binary_epilogue(acc, alpha, bias, clamp_min, clamp_max, 1)


def binary_conv2d_packed(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding):
    """binary_conv2d's output (no clamp) binarized and packed for the next binary layer:
    int64 [N, OH, OW, ceil(OC/64)], bit 1 where alpha * acc + bias >= 0 (so NaN -> 0).

    Defined as binary_pack_activation(binary_conv2d(...)); the kernels skip the float tensor.
    """
    y = binary_conv2d(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding)
    return binary_pack_activation(y)


def binary_linear(x_packed, w_packed, alpha, bias, in_features, clamp_min=None, clamp_max=None):
    """(sign(x) @ sign(w).T) * alpha + bias, optionally clamped; float32 (..., OUT).

    x_packed int64 [..., CW], w_packed int64 [OUT, CW]; integer part exact (float64).
    """
    from .formats import binary as binary_format

    op = "binary_linear"
    _binary_check_common(op, x_packed, w_packed, alpha, bias, in_features, 2)
    xs = binary_format.unpack_bits(x_packed, in_features, torch.float64)
    ws = binary_format.unpack_bits(w_packed, in_features, torch.float64)
    acc = xs @ ws.T
    return _binary_epilogue(acc, alpha, bias, clamp_min, clamp_max, -1)
