"""The int8 linear format.

Canonical, version 1 (what state_dict and files hold; the same on every device):

    weight        int8    [N, K]  row-major, values in [-127, 127] (symmetric: -128 is never used)
    weight_scale  float32 [N]     per output channel; W ~= weight * weight_scale[:, None]
    act_scale     float32 []      only for static activation quantization

Packed, version 1 (compressops.ops.int8_pack_weight; built from the canonical weight, never saved):

    header    64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "int8",
              version 1, N, K, family fields (NR, KR, 0) = (16, 4, 0), the blocking below
    weights   int8 [N_pad/16][K_pad/4][16][4] with N_pad = N rounded up to 16 and K_pad = K rounded
              up to 4: 16 output channels side by side, 4 consecutive k per lane (the operand shape
              of vpdpbusd / vpmaddubsw); zero padded
    col_sums  int32 [N_pad]: sum over k of each padded column (the vpdpbusd kernels feed x + 128 and
              subtract 128 * col_sum)
    shape     uint8 [N, ceil(packed_bytes(N, K) / N)] (pack_header.pack_shape), zero padded at the end
The pack's first dimension is N, which is how the fake kernel (it cannot read the header) knows the
output shape. All-zero layout bytes are the pack of the all-zero weight (zero blocks, zero column
sums), so zero_pack builds it without the pack op. K is at most MAX_K, so int32 sums stay exact.
csrc/common/int8_layout.h defines the same layout for C++; tests check both packers agree byte
for byte.

What the ops check on every call is what memory safety needs: the header against N, K and the
pack's size. The payload is derived data and is not re-verified (that would cost as much as the
product at batch 1): a pack whose weights or column sums were edited after int8_pack_weight (e.g. a
-128 weight, or sums that no longer match) reads nothing out of bounds but gives different values on
different ISA levels. Files never hold packs: loading rebuilds them from the checked canonical weight.
"""

from __future__ import annotations

import torch

from . import pack_header
from .checks import check_bias, check_devices, check_scale, check_x, is_fake, resolve_out_dtype

TAG = "int8"
VERSION = 1
NR = 16
KR = 4
FIELDS = (NR, KR, 0)
MAX_K = 131072  # int32 accumulation stays exact: MAX_K * 127 * 127 < 2**31
_PACK_OP = "int8_pack_weight"
_QUANT_BLOCK_ELEMS = 1 << 18  # weights per block of quantize_weight


def _round_up(v, m):
    return (v + m - 1) // m * m


def packed_bytes(n, k):
    """Bytes of the pack of an [n, k] weight, header included, before row padding (works on SymInts)."""
    n_pad, k_pad = _round_up(n, NR), _round_up(k, KR)
    return pack_header.HEADER_BYTES + n_pad * k_pad + 4 * n_pad


def zero_pack(n: int, k: int, device=None) -> torch.Tensor:
    """The pack of the all-zero int8 [n, k] weight, built without the pack op (a module skeleton's placeholder)."""
    return pack_header.zeros(TAG, VERSION, (n,), n, k, FIELDS, packed_bytes(n, k), device=device)


def quantize_weight(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization.

    Args:
        weight: float [N, K].
        name: used in error messages (e.g. the layer name).
    Returns:
        (w_q int8 [N, K] in [-127, 127], scale float32 [N]) with weight ~= w_q * scale[:, None].
        An all-zero row gets scale 0.
    Raises:
        ValueError: weight is not 2-D floating point, or holds NaN/Inf.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().float()
    n = w.shape[0]
    # one pass gives both max|w| per row and the finiteness check (min and max propagate NaN)
    lo, hi = torch.aminmax(w, dim=1)
    if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
        bad = (~torch.isfinite(w)).sum().item()
        raise ValueError(f"{name}: weight holds {bad} NaN/Inf values; int8 quantization needs finite weights")
    amax = torch.maximum(-lo, hi).abs_()  # = max|w|; abs_ makes an all-zero row's max +0 as |w| does
    scale = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    w_q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    # a block of rows at a time: the float temporaries stay cache-sized
    rows = max(1, _QUANT_BLOCK_ELEMS // max(1, w.shape[1]))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        w_q[r0:r1] = torch.round(w[r0:r1] * inv[r0:r1, None]).clamp_(-127, 127)
    return w_q, scale


def check_weight(w_q: torch.Tensor, op: str) -> None:
    """Raise ValueError unless w_q is a packable int8 [N, K] weight (1 <= N < 2^31, 1 <= K <= MAX_K,
    values in [-127, 127]; the value check reads data, so a fake tensor skips it)."""
    torch._check_value(w_q.dtype == torch.int8, lambda: f"{op}: w_q must be int8, got {w_q.dtype}")
    torch._check_value(w_q.dim() == 2, lambda: f"{op}: w_q must be 2-D [N, K], got shape {tuple(w_q.shape)}")
    n, k = w_q.shape
    for ok in (n >= 1, n < pack_header.MAX_DIM, k >= 1, k <= MAX_K):
        torch._check_value(ok, lambda: f"{op}: w_q needs 1 <= N < 2^31 and 1 <= K <= {MAX_K} (int32 accumulation), "
                                       f"got {tuple(w_q.shape)}")
    if not is_fake(w_q) and int(w_q.min()) < -127:
        raise ValueError(f"{op}: w_q must lie in [-127, 127] (symmetric int8); found -128")


def pack_weight(w_q: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.int8_pack_weight).

    Args:
        w_q: int8 [N, K], values in [-127, 127].
    Returns:
        uint8 [N, ceil(packed_bytes(N, K) / N)]: the packed layout of this module's docstring.
    """
    check_weight(w_q, _PACK_OP)
    n, k = w_q.shape
    n_pad, k_pad = _round_up(n, NR), _round_up(k, KR)
    w = torch.zeros(n_pad, k_pad, dtype=torch.int8, device=w_q.device)
    w[:n, :k] = w_q
    blocks = w.view(n_pad // NR, NR, k_pad // KR, KR).permute(0, 2, 1, 3).contiguous()
    col_sums = w.to(torch.int32).sum(dim=1, dtype=torch.int32)
    header = pack_header.make(TAG, VERSION, n, k, FIELDS, device=w_q.device)
    flat = torch.cat([header, blocks.view(-1).view(torch.uint8), col_sums.view(torch.uint8)])
    return pack_header.shaped(flat, (n,))


def read_header(w_packed: torch.Tensor, op: str) -> tuple[int, int]:
    """(N, K) of an int8 pack, after checking every header field and the size (the C++ host's
    read_header makes the same checks with the same messages).

    Raises:
        ValueError: not a valid pack; the message names `op` and "w_packed".
    """
    r = pack_header.Reader(op, "w_packed", _PACK_OP)
    h = pack_header.read(w_packed, TAG, VERSION, r)
    pack_header.check_layout(h, FIELDS, w_packed, (h.n,), packed_bytes(h.n, h.k), r)
    if h.k > MAX_K:  # only a hand-made header gets here: the pack op refuses such a K
        raise ValueError(f"{op}: w_packed's header has K={h.k}, more than an int8 pack holds ({MAX_K}, "
                         f"int32 accumulation)")
    return h.n, h.k


def unpack_weight(w_packed: torch.Tensor, op: str = "int8_unpack_weight") -> torch.Tensor:
    """The canonical int8 [N, K] weight of a pack (an exact copy: the pack's layout is blocked).

    Raises:
        ValueError: w_packed is not a valid int8 pack; the message names `op`.
    """
    n, k = read_header(w_packed, op)
    n_pad, k_pad = _round_up(n, NR), _round_up(k, KR)
    start = pack_header.HEADER_BYTES
    body = w_packed.view(-1)[start:start + n_pad * k_pad].view(torch.int8)
    w = body.view(n_pad // NR, k_pad // KR, NR, KR).permute(0, 2, 1, 3).reshape(n_pad, k_pad)
    return w[:n, :k].contiguous()


def dense_weight(op: str, w_packed: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, K] = w_q * w_scale[:, None] of a pack and its per-channel scales: what
    int8_weight_only_linear multiplies by, and int8_linear too if its activation rounding is left out
    (the straight-through estimator of its gradient)."""
    return unpack_weight(w_packed, op).float() * w_scale.float()[:, None]


MIN_ACT_SCALE = 2.0**-126  # the smallest normal float32: its reciprocal, 2^126, is finite


def check_act_scale(act_scale: torch.Tensor | None, op: str) -> None:
    """Raise ValueError unless act_scale is None or a one-element float tensor, finite and positive
    and, as float32, at least 2^-126 (below it 1 / act_scale overflows to inf, which would map every
    nonzero activation to +-127 whatever its size).

    The value check reads data, so it is skipped on fake tensors (torch.compile tracing).
    """
    if act_scale is None:
        return
    torch._check_value(act_scale.numel() == 1 and act_scale.is_floating_point(),
                       lambda: f"{op}: act_scale must be a one-element float tensor, got {act_scale.dtype} "
                               f"{tuple(act_scale.shape)}")
    if is_fake(act_scale):
        return
    s = act_scale.detach().float().reshape(())
    if not (torch.isfinite(s) and s > 0):
        raise ValueError(f"{op}: act_scale must be finite and positive, got {float(s):g}")
    if float(s) < MIN_ACT_SCALE:
        raise ValueError(f"{op}: act_scale must be at least 2^-126 (1 / act_scale overflows float32 below it), "
                         f"got {float(s):g}")


def check_activation(x: torch.Tensor, act_scale: torch.Tensor | None, op: str = "int8_quantize_activation") -> None:
    """The validation of compressops.ops.int8_quantize_activation: float x (..., K), act_scale as
    check_act_scale accepts it."""
    check_x(x, op)
    check_devices(op, "x", x, {"act_scale": act_scale})
    check_act_scale(act_scale, op)


def quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of the rows of x (last dimension): the math of
    compressops.ops.int8_quantize_activation, which every int8 activation path shares.

    Dynamic (act_scale None), per row: amax = max|x|; scale = amax / 127;
    q = round_half_even(clamp(x * (127 / amax), -127, 127)). A row whose 127 / amax is not finite
    in float32 (amax 0, or amax below about 3.7e-37, where the reciprocal overflows) gets scale 0
    and q 0; a row holding NaN/Inf gets scale NaN and q 0 (so its linear output is NaN).
    Static: q = round_half_even(clamp(x * (1 / act_scale), -127, 127)), NaN -> 0, and every
    row's scale is act_scale.
    All arithmetic in float32, divisions as true divisions (not reciprocal multiplies).

    Args:
        x: float32/bfloat16/float16 (..., K), already validated (check_activation).
        act_scale: None (dynamic) or a one-element float tensor, finite and positive.
    Returns:
        (q int8 shaped like x, scale float32 shaped x.shape[:-1]).
    """
    xf = x.float()
    if act_scale is None:
        if x.shape[-1] == 0:
            return torch.zeros_like(xf, dtype=torch.int8), xf.new_zeros(x.shape[:-1])
        amax = xf.abs().amax(dim=-1)
        finite = torch.isfinite(amax)
        inv = torch.div(torch.full_like(amax, 127.0), amax)  # inf for amax 0 and for tiny amax
        usable = finite & torch.isfinite(inv)
        inv = torch.where(usable, inv, torch.zeros_like(inv))
        scale = torch.where(usable, torch.div(amax, torch.full_like(amax, 127.0)),
                            torch.where(finite, torch.zeros_like(amax), torch.full_like(amax, float("nan"))))
        v = xf * inv.unsqueeze(-1)
        v = torch.where(usable.unsqueeze(-1), v, torch.zeros_like(v))
    else:
        s = act_scale.detach().float().reshape(())
        inv = torch.div(torch.ones_like(s), s)
        v = xf * inv
        scale = s.expand(x.shape[:-1]).clone()
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    q = v.clamp(-127.0, 127.0).round().to(torch.int8)
    return q, scale


def w8a8_epilogue(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                  out_dtype: torch.dtype, shape) -> torch.Tensor:
    """The float epilogue of every W8A8 product: float(acc) * (x_scale * w_scale) + bias, in float32.

    The reference and the Triton kernels run this same sequence of float32 operations, so their
    results agree bit for bit once the int32 sums do.

    Args:
        acc: int32 [M, N] exact integer sums.
        x_scale: float32 [M] or (...) with M elements.
        w_scale: float32 [N].
        bias: optional float [N].
        out_dtype: the result's dtype.
        shape (tuple[int, ...]): the output shape (..., N).
    """
    y = acc.float() * (x_scale.reshape(-1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype).reshape(shape)


def check_linear(op: str, x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                 act_scale: torch.Tensor | None = None) -> tuple[int, int, torch.dtype]:
    """The validation of int8_linear and int8_weight_only_linear (reference, fake and Triton kernels),
    in the C++ host's order, so the first bad argument raises the same message everywhere.

    Args:
        op: the op name the messages start with.
        x: float (..., K). w_packed: uint8 from int8_pack_weight. w_scale: float32 [N].
        bias: optional float [N]. out_dtype: float32/bfloat16/float16 or None (x.dtype).
        act_scale: int8_linear's optional static activation scale.
    Returns:
        (N, K, output dtype).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_x(x, op)
    check_devices(op, "x", x, {"w_packed": w_packed, "w_scale": w_scale, "bias": bias, "act_scale": act_scale})
    n, k = pack_header.linear_nk(x, w_packed, pack_header.Reader(op, "w_packed", _PACK_OP), read_header)
    check_scale(w_scale, n, op)
    check_bias(bias, n, op)
    out_t = resolve_out_dtype(x, out_dtype, op)
    check_act_scale(act_scale, op)
    return n, k, out_t
