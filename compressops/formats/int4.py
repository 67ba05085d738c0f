"""The int4 linear format: group-wise 4-bit weights (DESIGN.md section 4).

Canonical, version 1 (what state_dict and files hold; the same on every device):

    qweight  uint8   [N, K_pad/2]  two 4-bit codes a byte, low nibble = even k
                                   (byte [n, i] = q[n, 2i] | q[n, 2i + 1] << 4)
    scales   float32 [N, G]        one scale per output channel and group of `group_size` k
    zeros    uint8   [N, G]        zero points in [0, 15] (asymmetric); absent when symmetric (z = 8)
with K_pad = K rounded up to group_size (32, 64, 128 or 256) and G = K_pad / group_size. The weight is

    w[n, k] = (q[n, k] - z[n, k // group_size]) * s[n, k // group_size]

Columns k >= K (padding) hold q = z, so they dequantize to exactly 0.

Packed, version 2 (compressops.ops.int4_pack_weight; built from the canonical tensors, never saved),
the layout of csrc/common/int4_layout.h:

    header  64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "int4",
            version 2, N, K, family fields (group_size, G, symmetric 0/1)
    body    for each block of NR = 8 output channels (N_pad = N rounded up to 8) and each group:
            group_size*4 bytes of codes (chunk j of 32 bytes: byte 4c+i holds column c's k=8j+i in
            its low nibble and k=8j+4+i in its high nibble), the 8 scales s (the canonical bytes)
            and the 8 products z*s in float32; padded channels are zero
    zeros   asymmetric only: the canonical zero points, uint8 [N, G] row-major (the kernels use z*s;
            these keep z itself, which z*s cannot always give back, e.g. when s = 0)
    shape   uint8 [N, ceil(packed_bytes / N)] (pack_header.pack_shape), zero padded at the end
The pack holds every canonical byte, so unpack_weight gives the canonical tensors back bit for bit
and a module needs to hold only the pack. All-zero layout bytes are the pack of qweight = 0,
scales = 0 (and zeros = 0): a weight of zeros, w = (0 - z) * 0, symmetric or not (zero_pack).

Linear computation (compressops.ops.int4_linear, "W4A8"): each row of x is quantized to int8
per group of group_size k (symmetric, scale = amax/127, q = round_half_even(x * (127/amax)),
both in float32; a group whose 127/amax is not finite, i.e. amax 0 or amax so small that the
reciprocal overflows (below about 3.7e-37), is quantized as zero: scale 0, q 0; a group holding
NaN/Inf gets scale NaN), and
    y[m, n] = bias[n] + sum_g a_s[m, g] * s[n, g] * (sum_{k in g} q[n, k] qx[m, k] - z[n, g] sum_{k in g} qx[m, k]).
The integer sums are exact; the result is within about 1% (relative Frobenius norm, Gaussian
data) of x @ dequantize().T in fp32.
"""

from __future__ import annotations

import torch

from typing import NamedTuple

from . import pack_header
from .checks import all_finite, check_bias, check_devices, check_k, check_x, is_fake, resolve_out_dtype

TAG = "int4"
VERSION = 2
NR = 8
GROUP_SIZES = (32, 64, 128, 256)
_GROUP_SIZES_TEXT = "32, 64, 128 or 256"
_PACK_OP = "int4_pack_weight"


def _round_up(v, m):
    return (v + m - 1) // m * m


def check_group_size(group_size: int, where: str = "int4") -> None:
    """Raise ValueError (starting with `where`) unless group_size is one the kernels take."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{where}: group_size must be {_GROUP_SIZES_TEXT}, got {group_size}")


def padded_k(k: int, group_size: int) -> int:
    """K_pad: k rounded up to the group size."""
    return _round_up(k, group_size)


def group_stride(group_size: int) -> int:
    """Bytes of one (block of 8 channels, group) run of the body: codes, 8 scales, 8 z*s."""
    return group_size * 4 + 2 * NR * 4


def body_bytes(n, k, group_size):
    """Bytes of the kernels' part of the pack of an [n, k] weight (works on SymInts)."""
    return _round_up(n, NR) // NR * (_round_up(k, group_size) // group_size) * group_stride(group_size)


def packed_bytes(n, k, group_size, symmetric):
    """Bytes of the pack of an [n, k] weight before row padding: header, body, zero points when
    asymmetric (works on SymInts)."""
    zeros = 0 if symmetric else n * (_round_up(k, group_size) // group_size)
    return pack_header.HEADER_BYTES + body_bytes(n, k, group_size) + zeros


def pack_fields(k: int, group_size: int, symmetric: bool) -> tuple[int, int, int]:
    """The header's family fields: (group_size, G, 1 if symmetric else 0)."""
    return group_size, _round_up(k, group_size) // group_size, 1 if symmetric else 0


def zero_pack(n: int, k: int, group_size: int, symmetric: bool, device=None) -> torch.Tensor:
    """The pack of qweight = 0, scales = 0 (zeros = 0): an all-zero [n, k] weight, built without a pack op
    (zero layout bytes are exactly that pack; see the module docstring)."""
    return pack_header.zeros(TAG, VERSION, (n,), n, k, pack_fields(k, group_size, symmetric),
                             packed_bytes(n, k, group_size, symmetric), device=device)


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

def _range_stats(w, symmetric):
    """What _range_params reads of the groups w [..., g]: max|w| [...], or (min(w, 0), max(w, 0))."""
    if symmetric:
        return w.abs().amax(dim=-1)
    return w.amin(dim=-1).clamp(max=0), w.amax(dim=-1).clamp(min=0)


def _range_params(w, symmetric, shrink, stats=None):
    stats = _range_stats(w, symmetric) if stats is None else stats
    if symmetric:
        scale = stats * (shrink * 2.0 / 15.0)
        return scale, torch.full_like(scale, 8.0)
    lo = stats[0] * shrink
    hi = stats[1] * shrink
    scale = (hi - lo) / 15.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.where(scale > 0, torch.round(-lo / safe).clamp(0, 15), torch.zeros_like(scale))
    return scale, zero


CLIP_GRID = 20      # range shrink factors tried per group: 1, 0.96, ..., 0.24
CLIP_MAX_SHRINK = 0.8
# Elements (candidates x groups x group_size) of one block of the batched clip search: a few MiB,
# so the ~10 passes over a block stay in the last-level cache instead of streaming the
# 20x-sized candidate tensor through memory once per pass.
_CLIP_BLOCK_ELEMS = 1 << 20


def _shrinks() -> list[float]:
    return [1.0 - CLIP_MAX_SHRINK * i / CLIP_GRID for i in range(CLIP_GRID)]


def group_params(w: torch.Tensor, symmetric: bool, clip_search: bool = True,
                 importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest parameters of groups: w float [..., g] -> (scale [...], zero [...] float).

    Asymmetric: the range [p * min(w, 0), p * max(w, 0)] maps onto 0..15: scale = (hi - lo) / 15,
    z = clamp(round(-lo / scale), 0, 15). Symmetric: scale = 2 * p * max|w| / 15, z = 8 (codes
    clamp to [0, 15]). With clip_search, p is chosen per group among 1 - 0.8 * i / 20
    (i = 0..19) to minimise the group's squared rounding error (ties keep the larger range),
    each column's error weighted by `importance` (broadcastable to w, e.g. [g]; GPTQ passes
    diag(H)) when given; without clip_search p = 1. A group of zeros gets scale 0.

    This is the batched form of group_params_reference (all candidates of a block of groups in
    one tensor); it performs the same float32 operations element by element and the same
    reductions, so its result is bit-identical (tests/test_convert_speed.py checks it).
    """
    if not clip_search:
        return _range_params(w, symmetric, 1.0)
    g = w.shape[-1]
    batch = w.shape[:-1]
    w2 = w.reshape(-1, g)
    imp = None if importance is None else importance.to(w2.dtype).expand(w.shape).reshape(-1, g)
    # every candidate's (scale, zero) for every group, [C, M]: per-group work, cheap
    stats = _range_stats(w2, symmetric)
    cand = [_range_params(w2, symmetric, p, stats) for p in _shrinks()]
    s_all = torch.stack([c[0] for c in cand])
    z_all = torch.stack([c[1] for c in cand])
    # a zero scale quantizes to q = z, i.e. (q - z) * s = 0, which dividing by 1 also gives
    safe_all = torch.where(s_all > 0, s_all, torch.ones_like(s_all))
    m = w2.shape[0]
    err = w2.new_empty(CLIP_GRID, m)
    rows = max(1, _CLIP_BLOCK_ELEMS // (CLIP_GRID * g))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        wc = w2[r0:r1]
        s = s_all[:, r0:r1, None]
        z = z_all[:, r0:r1, None]
        t = torch.div(wc, safe_all[:, r0:r1, None])  # [C, R, g]
        t.round_().add_(z).clamp_(0, 15).sub_(z).mul_(s).sub_(wc)
        t.mul_(t)  # what .pow(2) computes
        if imp is not None:
            t.mul_(imp[r0:r1])
        torch.sum(t, dim=-1, out=err[:, r0:r1])
    best_e, best_s, best_z = err[0], s_all[0], z_all[0]
    for i in range(1, CLIP_GRID):
        better = err[i] < best_e
        best_e = torch.where(better, err[i], best_e)
        best_s = torch.where(better, s_all[i], best_s)
        best_z = torch.where(better, z_all[i], best_z)
    return best_s.reshape(batch), best_z.reshape(batch)


def group_params_reference(w: torch.Tensor, symmetric: bool, clip_search: bool = True,
                           importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition of group_params, one candidate at a time (the oracle its tests compare to)."""
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
    """weight as float32 [N, K] (no copy when it already is), after checking it is 2-D, floating
    point and finite.

    Raises:
        ValueError: naming `name`, with the number of NaN/Inf values.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().float()
    if not all_finite(w):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name}: weight holds {bad} NaN/Inf values; int4 quantization needs finite weights")
    return w


# Rows of the weight per block when computing the codes: keeps the temporaries cache-sized.
_CODE_BLOCK_ELEMS = 1 << 18


def quantize_weight(weight: torch.Tensor, group_size: int = 128, symmetric: bool = False, name: str = "weight"):
    """Round-to-nearest group-wise int4 quantization.

    Args:
        weight: float [N, K].
        group_size: 32, 64, 128 or 256 (k per group along the input dimension).
        symmetric: zero point fixed at 8 (no zeros tensor) instead of one per group.
        name: used in error messages (e.g. the layer name).
    Returns:
        tuple: (qweight uint8 [N, K_pad/2], scales float32 [N, G], zeros uint8 [N, G] or None).
    Raises:
        ValueError: not a 2-D float weight, NaN/Inf values, bad group size.
    """
    check_group_size(group_size, name)
    w = check_float_weight(weight, name)
    n, k = w.shape
    kp = padded_k(k, group_size)
    g = kp // group_size
    if kp == k:
        wp = w.contiguous()
    else:
        wp = torch.zeros(n, kp, dtype=torch.float32, device=w.device)
        wp[:, :k] = w
    wg = wp.view(n, g, group_size)
    # statistics over real columns only: padding is 0, which min(.,0)/max(.,0)/abs already ignore
    scale, zero = group_params(wg, symmetric)
    return pack_nibbles(quantize_codes(wg, scale, zero, k)), scale.contiguous(), \
        None if symmetric else zero.to(torch.uint8).contiguous()


def quantize_codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 codes [N, K_pad] of the grouped weight wg float32 [N, G, group_size] under (scale,
    zero) [N, G]: quantize_values, with the padding columns k >= `k` set to the last group's zero
    point; computed a block of rows at a time (no full-size float temporaries)."""
    n, g, gs = wg.shape
    kp = g * gs
    out = torch.empty(n, kp, dtype=torch.uint8, device=wg.device)
    rows = max(1, _CODE_BLOCK_ELEMS // kp)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        s = scale[r0:r1, :, None]
        z = zero[r0:r1, :, None]
        # the operations of quantize_values, in place
        t = torch.div(wg[r0:r1], torch.where(s > 0, s, torch.ones_like(s)))
        t.round_().add_(z)
        if not bool((s > 0).all()):
            t = torch.where(s > 0, t, z.expand_as(t))
        out[r0:r1] = t.clamp_(0, 15).view(r1 - r0, kp)
    if kp != k:
        out[:, k:] = zero[:, -1:].to(torch.uint8).expand(n, kp - k)
    return out


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, in_features: int,
               group_size: int) -> torch.Tensor:
    """float32 [N, in_features]: (q - z) * s."""
    q = unpack_nibbles(qweight).float()
    n, kp = q.shape
    g = kp // group_size
    z = zeros.float() if zeros is not None else torch.full((n, g), 8.0, device=q.device)
    w = (q.view(n, g, group_size) - z.unsqueeze(-1)) * scales.unsqueeze(-1)
    return w.reshape(n, kp)[:, :in_features].contiguous()


def check_canonical(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, in_features: int,
                    group_size: int, op: str) -> tuple[int, int, int]:
    """The validation of int4_pack_weight (reference, fake and C++ give these messages).

    Args:
        qweight: uint8 [N, K_pad/2]. scales: float32 [N, G]. zeros: uint8 [N, G] in [0, 15] or None.
        in_features: K. group_size: 32, 64, 128 or 256. op: the name the messages start with.
    Returns:
        (N, K_pad, G).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_group_size(group_size, op)
    check_devices(op, "qweight", qweight, {"scales": scales, "zeros": zeros})
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"{op}: qweight must be uint8 [N, K_pad/2], got {qweight.dtype} {tuple(qweight.shape)}")
    n = qweight.shape[0]
    if not (1 <= n < pack_header.MAX_DIM and 1 <= in_features < pack_header.MAX_DIM):
        raise ValueError(f"{op}: need 1 <= N, in_features < 2^31, got N={n}, in_features={in_features}")
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
        if not is_fake(zeros) and int(zeros.max()) > 15:  # data: skipped by the fake kernel
            raise ValueError(f"{op}: zeros must lie in [0, 15]")
    return n, kp, g


# ---------------------------------------------------------------------------------------------
# the pack

class Layout(NamedTuple):
    """What an int4 pack's header says (read_header checked it against the pack's size)."""

    n: int
    k: int
    group_size: int
    symmetric: bool

    @property
    def groups(self) -> int:
        return padded_k(self.k, self.group_size) // self.group_size

    @property
    def k_pad(self) -> int:
        return padded_k(self.k, self.group_size)

    @property
    def n_pad(self) -> int:
        return _round_up(self.n, NR)


def pack_weight(qweight, scales, zeros, in_features, group_size):
    """Pure-PyTorch packer (the reference of compressops.ops.int4_pack_weight; the same bytes).

    Args:
        qweight (Tensor): uint8 [N, K_pad/2].
        scales (Tensor): float32 [N, G].
        zeros (Tensor | None): uint8 [N, G], or None (symmetric).
        in_features (int): K.
        group_size (int): 32, 64, 128 or 256.
    Returns:
        uint8 [N, ceil(packed_bytes / N)]: the layout of the module docstring.
    """
    n, kp, g = check_canonical(qweight, scales, zeros, in_features, group_size, _PACK_OP)
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
    parts = [pack_header.make(TAG, VERSION, n, in_features, pack_fields(in_features, group_size, zeros is None),
                              device=dev),
             torch.cat([codes, tail], dim=-1).reshape(-1)]
    if zeros is not None:
        parts.append(zeros.contiguous().view(-1))
    return pack_header.shaped(torch.cat(parts), (n,))


def read_header(w_packed: torch.Tensor, op: str) -> Layout:
    """The layout of an int4 pack, after checking every header field and the pack's size against
    N and K (so the body and zero points lie inside it).

    Raises:
        ValueError: not a valid pack; the message names `op` and "w_packed" (the C++ host raises the same messages).
    """
    r = pack_header.Reader(op, "w_packed", _PACK_OP)
    h = pack_header.read(w_packed, TAG, VERSION, r)
    gs, _, sym = h.fields
    if gs not in GROUP_SIZES:
        raise ValueError(f"{op}: w_packed's header has group_size={gs}, not {_GROUP_SIZES_TEXT}; repack it with "
                         f"compressops.ops.{_PACK_OP}")
    symmetric = sym != 0
    pack_header.check_layout(h, pack_fields(h.k, gs, symmetric), w_packed, (h.n,),
                             packed_bytes(h.n, h.k, gs, symmetric), r)
    return Layout(h.n, h.k, gs, symmetric)


def _body(w_packed: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The body of a checked pack as uint8 [N_pad / 8, G, group_stride] (a view)."""
    start = pack_header.HEADER_BYTES
    nbytes = body_bytes(lay.n, lay.k, lay.group_size)
    return w_packed.view(-1)[start:start + nbytes].view(lay.n_pad // NR, lay.groups, group_stride(lay.group_size))


def _body_floats(body: torch.Tensor, lay: Layout, which: int) -> torch.Tensor:
    """float32 [N, G] of the body: which = 0 the scales, 1 the products z*s (their exact bytes)."""
    start = lay.group_size * 4 + which * NR * 4
    f = body[:, :, start:start + NR * 4].contiguous().view(torch.float32)  # [nb, g, c]
    return f.permute(0, 2, 1).reshape(lay.n_pad, lay.groups)[:lay.n].contiguous()


def _body_codes(body: torch.Tensor, lay: Layout) -> torch.Tensor:
    """uint8 codes [N, K_pad] of the body."""
    gs = lay.group_size
    codes = body[:, :, :gs * 4].reshape(lay.n_pad // NR, lay.groups, gs // 8, NR, 4)
    q = torch.stack([codes & 15, codes >> 4], dim=4)  # [nb, g, j, c, half, i]
    return q.permute(0, 3, 1, 2, 4, 5).reshape(lay.n_pad, lay.k_pad)[:lay.n].contiguous()


def kernel_operands(w_packed: torch.Tensor, op: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Layout]:
    """What the kernels compute with: (codes uint8 [N, K_pad], scales float32 [N, G],
    z*s float32 [N, G] as the pack rounded it, layout)."""
    lay = read_header(w_packed, op)
    body = _body(w_packed, lay)
    return _body_codes(body, lay), _body_floats(body, lay, 0), _body_floats(body, lay, 1), lay


def dense_weight(op: str, w_packed: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, K] the sums of int4_linear use: code * s - z*s per group, with the
    pack's own float32 z*s (so within an ulp of dequantize's (q - z) * s, and exactly the kernels')."""
    codes, s, zs, lay = kernel_operands(w_packed, op)
    w = codes.view(lay.n, lay.groups, lay.group_size).float() * s[..., None] - zs[..., None]
    return w.view(lay.n, lay.k_pad)[:, :lay.k].contiguous()


def unpack_weight(w_packed: torch.Tensor, op: str = "int4_unpack_weight"):
    """The canonical tensors of a pack, bit for bit (the inverse of pack_weight).

    Returns:
        tuple: (qweight uint8 [N, K_pad/2], scales float32 [N, G], zeros uint8 [N, G] or None when
            symmetric, layout); new tensors, not views (a write to them would not reach the kernels'
            z*s).
    Raises:
        ValueError: w_packed is not a valid int4 pack; the message names `op`.
    """
    lay = read_header(w_packed, op)
    body = _body(w_packed, lay)
    zeros = None
    if not lay.symmetric:
        start = pack_header.HEADER_BYTES + body_bytes(lay.n, lay.k, lay.group_size)
        zeros = w_packed.view(-1)[start:start + lay.n * lay.groups].view(lay.n, lay.groups).clone()
    return pack_nibbles(_body_codes(body, lay)), _body_floats(body, lay, 0), zeros, lay


def check_linear(op: str, x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> tuple[int, int, torch.dtype, Layout | None]:
    """The validation of int4_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K). w_packed: uint8 [N, R] from int4_pack_weight.
        bias: optional float [N]. out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        (N, K, output dtype, layout): the layout is None on fake tensors, whose data (the header)
        cannot be read: N is then the pack's first dimension and K is x's, and the kernel checks
        the header when it runs on real tensors.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_x(x, op)
    check_devices(op, "x", x, {"w_packed": w_packed, "bias": bias})
    if is_fake(w_packed):
        (n,) = pack_header.check_rows(w_packed, pack_header.Reader(op, "w_packed", _PACK_OP), 2)
        lay, k = None, x.shape[-1]
    else:
        lay = read_header(w_packed, op)
        n, k = lay.n, lay.k
        check_k(x, k, op, "the weight has K")
    check_bias(bias, n, op)
    return n, k, resolve_out_dtype(x, out_dtype, op), lay


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
