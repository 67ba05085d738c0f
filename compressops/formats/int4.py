"""The int4 linear format: group-wise 4-bit weights (DESIGN.md section 4).

Canonical (what state_dict and files hold):
    qweight  uint8   [N, K_pad/2]  two 4-bit codes a byte, low nibble = even k
                                   (byte [n, i] = q[n, 2i] | q[n, 2i + 1] << 4)
    scales   float32 [N, G]        one scale per output channel and group of `group_size` k
    zeros    uint8   [N, G]        zero points in [0, 15] (asymmetric); absent when symmetric (z = 8)
with K_pad = K rounded up to group_size and G = K_pad / group_size. The weight is

    w[n, k] = (q[n, k] - z[n, k // group_size]) * s[n, k // group_size]

Columns k >= K (padding) hold q = z, so they dequantize to exactly 0.

Prepacked (CPU kernels; rebuilt from the canonical tensors, never serialized), a 1-D uint8 tensor
laid out as csrc/common/int4_layout.h describes: a 64-byte header (int32 magic, version, N, K,
K_pad, group_size, G, N_pad, NR=8, symmetric, 6 reserved), then for each block of 8 output
channels and each group: group_size*4 bytes of codes (chunk j of 32 bytes: byte 4c+i holds
column c's k=8j+i in its low nibble and k=8j+4+i in its high nibble), 8 fp32 scales and 8 fp32
z*s. pack_weight below is the pure-PyTorch packer; tests check it matches the native one.

Linear computation (compressops.ops.int4_linear, "W4A8"): each row of x is quantized to int8
per group of group_size k (symmetric, scale = amax/127, round half to even), and
    y[m, n] = bias[n] + sum_g a_s[m, g] * s[n, g] * (sum_{k in g} q[n, k] qx[m, k] - z[n, g] sum_{k in g} qx[m, k]).
The integer sums are exact; the result is within about 1% (relative Frobenius norm, Gaussian
data) of x @ dequantize().T in fp32.
"""

from __future__ import annotations

import torch

from .checks import check_bias, check_k, check_packed, check_x, is_fake, resolve_out_dtype

MAGIC = 0x34493443
VERSION = 1
NR = 8
HEADER_BYTES = 64
GROUP_SIZES = (32, 64, 128, 256)


def _round_up(v, m):
    return (v + m - 1) // m * m


def check_group_size(group_size: int, where: str = "int4") -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{where}: group_size must be one of {GROUP_SIZES}, got {group_size}")


def padded_k(k: int, group_size: int) -> int:
    return _round_up(k, group_size)


def group_stride(group_size: int) -> int:
    return group_size * 4 + 2 * NR * 4


def packed_bytes(n, k, group_size):
    """Bytes of the prepacked buffer for an [n, k] weight (works on SymInts)."""
    n_pad = _round_up(n, NR)
    groups = _round_up(k, group_size) // group_size
    return HEADER_BYTES + (n_pad // NR) * groups * group_stride(group_size)


# ---------------------------------------------------------------------------------------------
# nibbles

def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] in [0, 15] (K even) -> uint8 [N, K/2], low nibble = even k."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> uint8 codes [N, K] (inverse of pack_nibbles)."""
    lo = qweight & 15
    hi = qweight >> 4
    return torch.stack([lo, hi], dim=-1).reshape(qweight.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# quantization

def _range_params(w, symmetric, shrink):
    if symmetric:
        scale = w.abs().amax(dim=-1) * (shrink * 2.0 / 15.0)
        return scale, torch.full_like(scale, 8.0)
    lo = w.amin(dim=-1).clamp(max=0) * shrink
    hi = w.amax(dim=-1).clamp(min=0) * shrink
    scale = (hi - lo) / 15.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.where(scale > 0, torch.round(-lo / safe).clamp(0, 15), torch.zeros_like(scale))
    return scale, zero


CLIP_GRID = 20      # range shrink factors tried per group: 1, 0.96, ..., 0.24
CLIP_MAX_SHRINK = 0.8


def group_params(w: torch.Tensor, symmetric: bool, clip_search: bool = True,
                 importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest parameters of groups: w float [..., g] -> (scale [...], zero [...] float).

    Asymmetric: the range [p * min(w, 0), p * max(w, 0)] maps onto 0..15: scale = (hi - lo) / 15,
    z = clamp(round(-lo / scale), 0, 15). Symmetric: scale = 2 * p * max|w| / 15, z = 8 (codes
    clamp to [0, 15]). With clip_search, p is chosen per group among 1 - 0.8 * i / 20
    (i = 0..19) to minimise the group's squared rounding error (ties keep the larger range),
    each column's error weighted by `importance` [g] when given (GPTQ passes diag(H));
    without clip_search p = 1. A group of zeros gets scale 0.
    """
    best_s, best_z = _range_params(w, symmetric, 1.0)
    if not clip_search:
        return best_s, best_z
    best_e = _sq_error(w, best_s, best_z, importance)
    for i in range(1, CLIP_GRID):
        s, z = _range_params(w, symmetric, 1.0 - CLIP_MAX_SHRINK * i / CLIP_GRID)
        e = _sq_error(w, s, z, importance)
        better = e < best_e
        best_e = torch.where(better, e, best_e)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def _sq_error(w, s, z, importance=None):
    q = quantize_values(w, s, z)
    e = ((q - z.unsqueeze(-1)) * s.unsqueeze(-1) - w).pow(2)
    return (e * importance if importance is not None else e).sum(dim=-1)


def quantize_values(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes of w (float [..., g]) under per-group (scale, zero) [...]: clamp(round(w / s) + z, 0, 15)."""
    s = scale.unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.where(s > 0, torch.round(w / safe) + zero.unsqueeze(-1), zero.unsqueeze(-1).expand_as(w))
    return q.clamp(0, 15)


def check_float_weight(weight: torch.Tensor, name: str) -> torch.Tensor:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name}: weight holds {bad} NaN/Inf values; int4 quantization needs finite weights")
    return w


def quantize_weight(weight: torch.Tensor, group_size: int = 128, symmetric: bool = False, name: str = "weight"):
    """Round-to-nearest group-wise int4 quantization.

    Args:
        weight: float [N, K].
        group_size: 32, 64, 128 or 256 (k per group along the input dimension).
        symmetric: zero point fixed at 8 (no zeros tensor) instead of one per group.
        name: used in error messages (e.g. the layer name).
    Returns:
        (qweight uint8 [N, K_pad/2], scales float32 [N, G], zeros uint8 [N, G] or None).
    Raises:
        ValueError: not a 2-D float weight, NaN/Inf values, bad group size.
    """
    check_group_size(group_size, name)
    w = check_float_weight(weight, name)
    n, k = w.shape
    kp = padded_k(k, group_size)
    g = kp // group_size
    wp = torch.zeros(n, kp, dtype=torch.float32, device=w.device)
    wp[:, :k] = w
    wg = wp.view(n, g, group_size)
    # statistics over real columns only: padding is 0, which min(.,0)/max(.,0)/abs already ignore
    scale, zero = group_params(wg, symmetric)
    q = quantize_values(wg, scale, zero).view(n, kp)
    if kp != k:
        q[:, k:] = zero[:, -1:].expand(n, kp - k)
    return pack_nibbles(q.to(torch.uint8)), scale.contiguous(), None if symmetric else zero.to(torch.uint8).contiguous()


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, in_features: int,
               group_size: int) -> torch.Tensor:
    """float32 [N, in_features]: (q - z) * s."""
    q = unpack_nibbles(qweight).float()
    n, kp = q.shape
    g = kp // group_size
    z = zeros.float() if zeros is not None else torch.full((n, g), 8.0, device=q.device)
    w = (q.view(n, g, group_size) - z.unsqueeze(-1)) * scales.unsqueeze(-1)
    return w.reshape(n, kp)[:, :in_features].contiguous()


def check_canonical(qweight, scales, zeros, in_features, group_size, op):
    """Raise ValueError unless the canonical tensors are consistent; returns (N, K_pad, G)."""
    check_group_size(group_size, op)
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"{op}: qweight must be uint8 [N, K_pad/2], got {qweight.dtype} {tuple(qweight.shape)}")
    n = qweight.shape[0]
    if n < 1 or in_features < 1:
        raise ValueError(f"{op}: need N >= 1 and in_features >= 1, got N={n}, in_features={in_features}")
    kp = padded_k(in_features, group_size)
    if qweight.shape[1] * 2 != kp:
        raise ValueError(f"{op}: qweight must have K_pad/2 = {kp // 2} columns (in_features={in_features} padded "
                         f"to group_size={group_size}), got {qweight.shape[1]}")
    g = kp // group_size
    if scales.dtype != torch.float32 or tuple(scales.shape) != (n, g):
        raise ValueError(f"{op}: scales must be float32 [N, G] = [{n}, {g}], got {scales.dtype} {tuple(scales.shape)}")
    if zeros is not None:
        if zeros.dtype != torch.uint8 or tuple(zeros.shape) != (n, g):
            raise ValueError(f"{op}: zeros must be uint8 [N, G] = [{n}, {g}] or None (symmetric), got "
                             f"{zeros.dtype} {tuple(zeros.shape)}")
        if not is_fake(zeros) and zeros.numel() and int(zeros.max()) > 15:  # data: skipped by the fake kernel
            raise ValueError(f"{op}: zeros must lie in [0, 15]")
    return n, kp, g


# ---------------------------------------------------------------------------------------------
# prepacked kernel layout

def pack_weight(qweight, scales, zeros, in_features, group_size):
    """Pure-PyTorch packer (the reference for compressops.ops.int4_pack_weight)."""
    n, kp, g = check_canonical(qweight, scales, zeros, in_features, group_size, "int4_pack_weight")
    n_pad = _round_up(n, NR)
    dev = qweight.device
    q = torch.zeros(n_pad, kp, dtype=torch.uint8, device=dev)
    q[:n] = unpack_nibbles(qweight)
    # [nb, c, g, j, half, i] -> [nb, g, j, c, i] with half as the nibble
    q = q.view(n_pad // NR, NR, g, group_size // 8, 2, 4)
    codes = (q[:, :, :, :, 0, :] | (q[:, :, :, :, 1, :] << 4)).permute(0, 2, 3, 1, 4)
    codes = codes.reshape(n_pad // NR, g, group_size * 4)
    s = torch.zeros(n_pad, g, dtype=torch.float32, device=dev)
    s[:n] = scales
    z = torch.zeros(n_pad, g, dtype=torch.float32, device=dev)
    z[:n] = zeros.float() if zeros is not None else 8.0
    zs = z * s
    sv = s.view(n_pad // NR, NR, g).permute(0, 2, 1)
    zsv = zs.view(n_pad // NR, NR, g).permute(0, 2, 1)
    tail = torch.cat([sv, zsv], dim=-1).contiguous().view(torch.uint8)
    body = torch.cat([codes, tail], dim=-1).reshape(-1)
    header = torch.zeros(16, dtype=torch.int32, device=dev)
    header[:10] = torch.tensor([MAGIC, VERSION, n, in_features, kp, group_size, g, n_pad, NR,
                                1 if zeros is None else 0], dtype=torch.int32)
    return torch.cat([header.view(torch.uint8), body])


def read_header(w_packed: torch.Tensor, op: str = "int4") -> dict:
    """Parse and validate the header of a prepacked buffer; returns its fields as ints."""
    if w_packed.dtype != torch.uint8 or w_packed.dim() != 1 or w_packed.numel() < HEADER_BYTES:
        raise ValueError(f"{op}: w_packed must be a 1-D uint8 tensor from compressops.ops.int4_pack_weight, "
                         f"got {w_packed.dtype} of shape {tuple(w_packed.shape)}")
    h = w_packed[:HEADER_BYTES].clone().view(torch.int32).tolist()
    magic, version, n, k, kp, gs, g, n_pad, nr, sym = h[:10]
    if magic != MAGIC or version != VERSION or nr != NR or gs not in GROUP_SIZES:
        raise ValueError(f"{op}: w_packed does not hold an int4 pack (version {VERSION}); repack it with "
                         f"compressops.ops.int4_pack_weight")
    if w_packed.numel() != packed_bytes(n, k, gs):
        raise ValueError(f"{op}: w_packed has {w_packed.numel()} bytes but its header (N={n}, K={k}, "
                         f"group_size={gs}) needs {packed_bytes(n, k, gs)}")
    return {"n": n, "k": k, "k_pad": kp, "group_size": gs, "groups": g, "n_pad": n_pad, "symmetric": bool(sym)}


def unpack_weight(w_packed: torch.Tensor):
    """Inverse of pack_weight: -> (codes uint8 [N, K_pad], scales float32 [N, G], zero*scale float32 [N, G], header)."""
    h = read_header(w_packed)
    n, kp, gs, g, n_pad = h["n"], h["k_pad"], h["group_size"], h["groups"], h["n_pad"]
    body = w_packed[HEADER_BYTES:].view(n_pad // NR, g, group_stride(gs))
    codes = body[:, :, :gs * 4].reshape(n_pad // NR, g, gs // 8, NR, 4)
    lo, hi = codes & 15, codes >> 4
    q = torch.stack([lo, hi], dim=4)  # [nb, g, j, c, half, i]
    q = q.permute(0, 3, 1, 2, 4, 5).reshape(n_pad, kp)[:n]
    tail = body[:, :, gs * 4:].contiguous().view(torch.float32).view(n_pad // NR, g, 2, NR)
    s = tail[:, :, 0, :].permute(0, 2, 1).reshape(n_pad, g)[:n]
    zs = tail[:, :, 1, :].permute(0, 2, 1).reshape(n_pad, g)[:n]
    return q.contiguous(), s.contiguous(), zs.contiguous(), h


def check_linear(op: str, x: torch.Tensor, w_packed: torch.Tensor, out_features: int,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
    """The validation of int4_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K). w_packed: uint8 from int4_pack_weight. out_features: N.
        bias: optional float [N]. out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        (N, K, output dtype, header): header is read_header's dict, or None on fake tensors,
        whose data (the header) cannot be read: N is then out_features and K is x's, and the
        kernel checks the header when it runs on real tensors.
    Raises:
        ValueError naming the argument.
    """
    check_x(x, op)
    if is_fake(w_packed):
        check_packed(w_packed, op, "w_packed", "int4_pack_weight", HEADER_BYTES)
        h, n, k = None, out_features, x.shape[-1]
    else:
        h = read_header(w_packed, op)
        n, k = h["n"], h["k"]
    torch._check_value(out_features == n, lambda: f"{op}: out_features={out_features} but w_packed holds N={n}")
    check_k(x, k, op, "the weight has K")
    check_bias(bias, n, op)
    return n, k, resolve_out_dtype(x, out_dtype, op), h


# ---------------------------------------------------------------------------------------------
# import of GPTQ checkpoints

def gptq_to_canonical(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor | None,
                      group_size: int = 128, in_features: int | None = None, zero_offset: int = 1,
                      name: str = "gptq_to_canonical") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """An AutoGPTQ-style (v1, "gptq" format) tensor set -> the canonical asymmetric int4 tensors.

    Layout (g_idx absent, i.e. act-order off; the columns of each group are contiguous):
        qweight  int32 [K/8, N]   8 codes per int32 along K, low bits first: code of (k, n) =
                                  (qweight[k // 8, n] >> (4 * (k % 8))) & 15
        qzeros   int32 [G, N/8]   8 zero points per int32 along N, low bits first; AutoGPTQ v1
                                  stores z - 1 (so zero_offset=1 adds it back; pass 0 for
                                  checkpoints that store z itself, e.g. GPTQ "v2"/gptq_v2);
                                  None: z = 8 everywhere
        scales   fp16/fp32 [G, N]
    The weight is w[n, k] = (q - z) * s with G = K / group_size. K must be a multiple of 8
    (and K_pad/8 rows); in_features (default K) may be smaller when the checkpoint is padded.
    Symmetric checkpoints (all z = 8) still carry qzeros; they import as asymmetric (exact).
    compressops.nn.Int4Linear.from_gptq builds the layer from these tensors.

    Returns:
        (qweight uint8 [N, K_pad/2], scales float32 [N, G'], zeros uint8 [N, G'], in_features) with
        K_pad = in_features rounded up to group_size and G' = K_pad / group_size.
    Raises:
        ValueError: a dtype or shape that does not fit the layout (the message starts with `name`).
    """
    check_group_size(group_size, name)
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError(f"{name}: qweight must be int32 [K/8, N], got {qweight.dtype} {tuple(qweight.shape)}")
    k8, n = qweight.shape
    k = k8 * 8
    in_features = in_features or k
    g = scales.shape[0]
    if scales.dim() != 2 or scales.shape[1] != n or g * group_size < in_features or g != -(-k // group_size):
        raise ValueError(f"{name}: scales must be [G, N] = [{-(-k // group_size)}, {n}], got {tuple(scales.shape)}")
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    codes = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 15).reshape(k, n).t()  # [N, K]
    if qzeros is None:
        z = torch.full((n, g), 8, dtype=torch.int32, device=qweight.device)
    else:
        if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (g, -(-n // 8)):
            raise ValueError(f"{name}: qzeros must be int32 [G, N/8] = [{g}, {-(-n // 8)}], got "
                             f"{qzeros.dtype} {tuple(qzeros.shape)}")
        z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, 8)) & 15).reshape(g, -1)[:, :n].t()
        z = ((z + zero_offset) & 15) if zero_offset else z
    kp = padded_k(in_features, group_size)
    q = torch.empty(n, kp, dtype=torch.uint8, device=qweight.device)
    kk = min(k, kp)
    q[:, :kk] = codes[:, :kk].to(torch.uint8)
    zq = z.to(torch.uint8)
    if kp > kk:
        q[:, kk:] = zq[:, -1:]
    # columns past in_features are padding: they must hold the zero point
    if kp > in_features:
        q[:, in_features:] = zq[:, -1:].expand(n, kp - in_features)
    g_kept = kp // group_size
    return (pack_nibbles(q), scales[:g_kept].t().float().contiguous(), zq[:, :g_kept].contiguous(),
            in_features)
