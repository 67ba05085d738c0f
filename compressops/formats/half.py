"""The half format: the weight stored in float16, computed in float32.

Canonical, version 1 (what state_dict and files hold; the same on every device):

    weight  float16 [N, K]  row-major; round-to-nearest-even of the float weight, which must be finite
                            and within float16's range (|w| <= 65504: beyond it float16 holds inf)
    bias    float32 [N]     optional, kept exact

Packed, version 1 (compressops.ops.half_pack_weight; built from the canonical weight, never saved):

    header  64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "half",
            version 1, N, K, family fields (0, 0, 0)
    weight  the canonical weight's bytes, row-major float16 [N, K]: 2 * N * K bytes
    shape   uint8 [N, ceil((64 + 2 * N * K) / N)] (pack_header.pack_shape), zero padded at the end
The CPU kernels stream each weight row once per block of input rows (at M=1 a GEMV reads it exactly
once, contiguously), so the canonical order is already the kernels' order and the pack adds only the
header. The pack's first dimension is N, which is how the fake kernel (it cannot read the header)
knows the output shape.

half_linear computes y = x.float() @ w.float().T + bias in float32 (float16 -> float32 is exact),
then rounds to the output dtype. Float sums depend on their order, so kernels are not bit-identical
to the reference; each output before that final rounding is within
    (K + 2) * 2^-24 * (sum_k |x_k * w_k| + |bias|)
of the exact sum (the error bound of any order of K + 1 float32 additions, with room for the
fused/unfused products); error_bound() evaluates it and the tests hold every level to it.
"""

from __future__ import annotations

import torch

from . import pack_header
from .checks import all_finite, check_bias, check_devices, check_x, resolve_out_dtype

TAG = "half"
VERSION = 1
FIELDS = (0, 0, 0)
FP16_MAX = 65504.0
_PACK_OP = "half_pack_weight"


def packed_bytes(n, k):
    """Bytes of the pack of an [n, k] weight before row padding (works on SymInts)."""
    return pack_header.HEADER_BYTES + 2 * n * k


def zero_pack(n: int, k: int, device=None) -> torch.Tensor:
    """The pack of the all-zero [n, k] weight (zero bytes are float16 zeros), built without a pack op."""
    return pack_header.zeros(TAG, VERSION, (n,), n, k, FIELDS, packed_bytes(n, k), device=device)


def to_half(weight: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """The canonical float16 weight of a float weight [N, K] (round to nearest even).

    Raises:
        ValueError: weight is not 2-D floating point, holds NaN/Inf, or values beyond +-65504.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach()
    if not all_finite(w):
        raise ValueError(f"{name}: weight holds {int((~torch.isfinite(w)).sum())} NaN/Inf values; Half needs finite "
                         f"weights")
    big = w.abs() > FP16_MAX
    if big.any():
        raise ValueError(f"{name}: {int(big.sum())} weights exceed float16's range (|w| <= {FP16_MAX:g}); "
                         f"largest |w| = {float(w.abs().max()):g}")
    return w.to(torch.float16)


def check_weight(w: torch.Tensor, op: str) -> None:
    """Raise ValueError unless w is a packable float16 [N, K] weight (1 <= N, K < 2^31)."""
    torch._check_value(w.dtype == torch.float16, lambda: f"{op}: w must be float16, got {w.dtype}")
    torch._check_value(w.dim() == 2, lambda: f"{op}: w must be 2-D [N, K], got shape {tuple(w.shape)}")
    for size in w.shape:
        torch._check_value(size >= 1, lambda: f"{op}: w needs 1 <= N, K < 2^31, got {tuple(w.shape)}")
        torch._check_value(size < pack_header.MAX_DIM, lambda: f"{op}: w needs 1 <= N, K < 2^31, got {tuple(w.shape)}")


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.half_pack_weight).

    Args:
        w: float16 [N, K].
    Returns:
        uint8 [packed_bytes(N, K)]: the header, then w's bytes row-major.
    """
    check_weight(w, _PACK_OP)
    n, k = w.shape
    header = pack_header.make(TAG, VERSION, n, k, FIELDS, device=w.device)
    return pack_header.shaped(torch.cat([header, pack_header.flat_bytes(w)]), (n,))


def read_header(packed: torch.Tensor, op: str) -> tuple[int, int]:
    """(N, K) of a half pack, after checking every header field and the size.

    Raises:
        ValueError: not a valid pack; the message names `op` and "packed".
    """
    r = pack_header.Reader(op, "packed", _PACK_OP)
    h = pack_header.read(packed, TAG, VERSION, r)
    pack_header.check_layout(h, FIELDS, packed, (h.n,), packed_bytes(h.n, h.k), r)
    return h.n, h.k


def unpack_weight(packed: torch.Tensor, op: str = "half_unpack_weight") -> torch.Tensor:
    """The canonical float16 [N, K] weight of a pack: a view into it, no copy."""
    n, k = read_header(packed, op)
    start = pack_header.HEADER_BYTES
    return packed.view(-1)[start:start + 2 * n * k].view(torch.float16).view(n, k)


def dense_weight(op: str, packed: torch.Tensor) -> torch.Tensor:
    """The weight [N, K] of a pack in float32 (a copy of the float16 weight it holds)."""
    return unpack_weight(packed, op).float()


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> tuple[int, int, torch.dtype]:
    """The validation of half_linear (reference and fake kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K). packed: uint8 from half_pack_weight. bias: optional float [N].
        out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        (N, K, output dtype).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_x(x, op)
    check_devices(op, "x", x, {"packed": packed, "bias": bias})
    n, k = pack_header.linear_nk(x, packed, pack_header.Reader(op, "packed", _PACK_OP), read_header)
    check_bias(bias, n, op)
    return n, k, resolve_out_dtype(x, out_dtype, op)


def error_bound(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The largest error (see the module docstring) half_linear may make before its output rounding.

    Args:
        x: float (..., K). w: float16 [N, K]. bias: optional float [N].
    Returns:
        float64 (..., N).
    """
    k = x.shape[-1]
    s = x.double().abs().reshape(-1, k) @ w.double().abs().t()
    if bias is not None:
        s = s + bias.double().abs()
    return ((k + 2) * 2.0**-24 * s).reshape(*x.shape[:-1], w.shape[0])
