"""The binary (sign-bit) format: XNOR-popcount convolution and linear layers.

Canonical, version 1 (what state_dict and files hold; the same on every device):

    weight_bits  int64   conv: [OC, KH, KW, CW], linear: [OUT, CW], CW = ceil(C / 64)
                 sign(w) bit-packed along input channels: channel c of a tap is bit (c % 64) of
                 word c // 64, least significant bit first; bit 1 = +1 (w >= 0, so sign(0) = +1),
                 bit 0 = -1. Bits of channels >= C in the last word (channel padding) are 0.
    alpha        float32 [OC]  per output channel, alpha = mean |w| over (C, KH, KW)
    bias         float32 [OC]  optional

Packed, version 1 (compressops.ops.binary_pack_weight(weight_bits, in_channels); built from the
canonical weight_bits, never saved):

    header  64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "binary",
            version 1, N = OC (output channels), K = C (input channels: the valid bits of a tap),
            family fields (KH, KW, CW); a linear pack has KH = KW = 1
    words   weight_bits' words in their canonical order [OC, KH, KW, CW], int64 little endian:
            8 * OC * KH * KW * CW bytes
    shape   uint8 (OC, KH, KW, R) for a conv pack, (OC, R) for a linear pack, with
            R = ceil((64 + 8 * OC * KH * KW * CW) / (OC * KH * KW)) = 8 * CW + ceil(64 / (OC * KH * KW))
            (pack_header.pack_shape), zero padded at the end
The conv kernels walk each output channel's [KH, KW, CW] block tap row by tap row, so the canonical
order is the kernels' order and the pack adds only the header. Its leading dims are what the fake
kernels (which cannot read the header) need: OC for the output channels, KH and KW for the output
size. The reader re-derives the fields from K and the pack's dims and the byte count from those,
and checks the channel word count of x_packed against K, so no kernel reads past either buffer.
All-zero layout bytes are the pack of all-zero weight_bits (every weight -1), so a module skeleton
holds zero_pack() until it loads a state dict.

Activations are binarized at run time with the same rule (x >= 0 -> bit 1, so sign(0) = +1 and
NaN -> -1) and packed channels-last: [N, H, W, CW] int64 (conv) or [..., CW] (linear), channel
padding bits 0. The kernels rely on those pad bits being 0 in both operands (their XOR is then 0,
so they never count); binary_pack_activation always writes them as 0, binary_pack_weight refuses
weight_bits whose pad bits are not, and the compute ops refuse a w_packed or x_packed with a pad bit
set (a pack edited after packing, an activation built by hand), reading only the last word of each row.

The layer computes, for every output position,
    y = alpha * (matches - mismatches) + bias = alpha * (valid_bits - 2 * popcount(x XOR w)) + bias
where valid_bits = C * (number of kernel taps inside the image): taps that fall in the zero
spatial padding contribute 0, exactly as conv2d(sign(x), sign(w)) with zero padding does.
The weight is 32x smaller than fp32 (plus one fp32 scale per output channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import pack_header
from .checks import all_finite, check_bias, check_devices, check_x, is_fake, resolve_out_dtype

WORD_BITS = 64
TAG = "binary"
VERSION = 1
# A header may describe at most this many bytes; past it the C++ reader's int64 size arithmetic
# could overflow (N, K < 2^31 bound the words per tap, not the product with KH * KW).
MAX_PACK_BYTES = 2**62
_PACK_OP = "binary_pack_weight"


def words(c: int) -> int:
    """Number of int64 words holding c channel bits."""
    return (c + WORD_BITS - 1) // WORD_BITS


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (and NaN -> -1), in x's dtype: the binarization rule of this format."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Sign bits of the last dimension of x (C values) packed into int64 [..., ceil(C/64)]."""
    c = x.shape[-1]
    cw = words(c)
    bits = (x >= 0).to(torch.int64)
    if cw * WORD_BITS != c:
        bits = torch.nn.functional.pad(bits, (0, cw * WORD_BITS - c))
    bits = bits.reshape(*x.shape[:-1], cw, WORD_BITS)
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=x.device)
    # Distinct powers of two never carry, so the (wrapping) int64 sum is the bitwise OR.
    return (bits << shifts).sum(-1)


def unpack_bits(packed: torch.Tensor, c: int, dtype=torch.float32) -> torch.Tensor:
    """Inverse of pack_bits: int64 [..., CW] -> +-1 values [..., c] in dtype (pad bits ignored)."""
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*packed.shape[:-1], packed.shape[-1] * WORD_BITS)[..., :c]
    return (bits * 2 - 1).to(dtype)


def binarize_weight(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Binarize a float conv [OC, C, KH, KW] or linear [OUT, C] weight.

    Returns:
        (weight_bits int64 [OC, KH, KW, CW] or [OUT, CW], alpha float32 [OC] = mean |w|).
    Raises:
        ValueError: non-finite weights or an unsupported rank.
    """
    w = weight.detach().float()
    if w.dim() not in (2, 4):
        raise ValueError(f"{name}: expected a 2-D linear or 4-D conv weight, got {w.dim()}-D")
    if not all_finite(w):
        raise ValueError(f"{name}: weight holds NaN or Inf; cannot binarize it")
    alpha = w.abs().flatten(1).mean(1).contiguous()
    if w.dim() == 4:
        bits = pack_bits(w.permute(0, 2, 3, 1))
    else:
        bits = pack_bits(w)
    return bits.contiguous(), alpha


def weight_signs(weight_bits: torch.Tensor, in_channels: int) -> torch.Tensor:
    """+-1 float32 weight in torch's layout ([OC, C, KH, KW] or [OUT, C]) from weight_bits."""
    s = unpack_bits(weight_bits, in_channels)
    return s.permute(0, 3, 1, 2).contiguous() if s.dim() == 4 else s


def bits_of_signs(signs: torch.Tensor) -> torch.Tensor:
    """Inverse of weight_signs: weight_bits int64 [OC, KH, KW, CW] or [OUT, CW] of a +-1 weight in
    torch's layout ([OC, C, KH, KW] or [OUT, C])."""
    return pack_bits(signs.permute(0, 2, 3, 1) if signs.dim() == 4 else signs).contiguous()


def dequantize(weight_bits: torch.Tensor, alpha: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The float32 weight alpha * sign(w) this format computes with."""
    s = weight_signs(weight_bits, in_channels)
    return s * alpha.reshape(-1, *([1] * (s.dim() - 1)))


# ---------------------------------------------------------------------------------------------
# the pack

def packed_bytes(n, kh, kw, cw):
    """Bytes of the pack of an [n, kh, kw, cw]-word weight before row padding (works on SymInts)."""
    return pack_header.HEADER_BYTES + 8 * n * kh * kw * cw


def pack_rows(n, kh, kw, conv: bool) -> tuple:
    """The pack's leading dims: (OC, KH, KW) for a conv pack, (OUT,) for a linear one."""
    return (n, kh, kw) if conv else (n,)


def zero_pack(out_channels: int, in_channels: int, kernel_size=None, device=None) -> torch.Tensor:
    """The pack of all-zero weight_bits (every weight -1), built without the pack op: a conv pack
    with kernel_size (KH, KW), a linear pack without."""
    conv = kernel_size is not None
    kh, kw = kernel_size if conv else (1, 1)
    cw = words(in_channels)
    return pack_header.zeros(TAG, VERSION, pack_rows(out_channels, kh, kw, conv), out_channels, in_channels,
                             (kh, kw, cw), packed_bytes(out_channels, kh, kw, cw), device=device)


def _dims(shape) -> tuple:
    # Shapes in messages are tuples of plain ints, as the C++ host prints them.
    return tuple(int(d) for d in shape)


def check_pack_weight(weight_bits: torch.Tensor, in_channels: int, op: str = _PACK_OP) -> None:
    """The validation of binary_pack_weight: in_channels in [1, 2^31); weight_bits int64 [OC, KH,
    KW, CW] (conv) or [OUT, CW] (linear), CW = ceil(in_channels/64), every dim >= 1, OC < 2^31; its
    channel padding bits 0 (not checked on fake tensors, which hold no data).

    Raises:
        ValueError: an invalid argument; the message names it.
    """
    c = in_channels
    torch._check_value(1 <= c < pack_header.MAX_DIM, lambda: f"{op}: in_channels must be in [1, 2^31), got {c}")
    cw = words(c)

    def layout():
        return (f"{op}: weight_bits must be int64 [OC, KH, KW, {cw}] (conv) or [OUT, {cw}] (linear) for "
                f"in_channels={c}, got {weight_bits.dtype} {_dims(weight_bits.shape)}")

    torch._check_value(weight_bits.dtype == torch.int64 and weight_bits.dim() in (2, 4), layout)
    torch._check_value(weight_bits.shape[-1] == cw, layout)
    for size in weight_bits.shape[:-1]:
        torch._check_value(size >= 1, lambda: f"{op}: weight_bits needs OC, KH, KW >= 1, got "
                                              f"{_dims(weight_bits.shape)}")
    torch._check_value(weight_bits.shape[0] < pack_header.MAX_DIM,
                       lambda: f"{op}: weight_bits needs OC < 2^31, got {_dims(weight_bits.shape)}")
    check_pad_bits(weight_bits, c, "weight_bits", op)


def check_pad_bits(bits: torch.Tensor, in_channels: int, name: str, op: str) -> None:
    """The channel padding bits of `bits` (int64 [..., CW]: the bits of channels >= in_channels in
    the last word of each row) must be 0: the kernels XOR and count whole words, so a set pad bit in
    either operand changes the result. Reads the last words only; skipped on fake tensors, and when
    in_channels is a multiple of 64 (there are no pad bits).

    Raises:
        ValueError: an invalid index; the message names `op` and `name`.
    """
    shift = in_channels % WORD_BITS
    if not shift or is_fake(bits):
        return
    # Arithmetic shift: a set top bit leaves a negative word, still nonzero.
    if bool(((bits[..., -1] >> shift) != 0).any()):
        raise ValueError(f"{op}: {name} has bits set past in_channels={in_channels} in its last word; the channel "
                         f"padding bits must be 0")


def pack_weight(weight_bits: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.binary_pack_weight).

    Args:
        weight_bits: int64 [OC, KH, KW, CW] (conv) or [OUT, CW] (linear), CW = ceil(in_channels/64).
        in_channels: C, the valid bits of a tap.
    Returns:
        uint8 (OC, KH, KW, R) or (OUT, R): the header, then weight_bits' words (module docstring).
    """
    check_pack_weight(weight_bits, in_channels)
    conv = weight_bits.dim() == 4
    n, cw = weight_bits.shape[0], weight_bits.shape[-1]
    kh, kw = (weight_bits.shape[1], weight_bits.shape[2]) if conv else (1, 1)
    header = pack_header.make(TAG, VERSION, n, in_channels, (kh, kw, cw), device=weight_bits.device)
    body = pack_header.flat_bytes(weight_bits)
    return pack_header.shaped(torch.cat([header, body]), pack_rows(n, kh, kw, conv))


@dataclass(frozen=True)
class PackInfo:
    """What a binary pack's header says, checked: OC, C, kernel (KH, KW), CW words per tap."""

    n: int
    c: int
    kh: int
    kw: int
    cw: int


def read_header(packed: torch.Tensor, op: str, conv: bool) -> PackInfo:
    """The fields of a binary pack (a conv pack when conv, else a linear one), after checking the
    shared header, the family fields (KH, KW from the pack's dims, CW from K) and the size.

    Raises:
        ValueError: not a valid pack; the message names `op` and "w_packed".
    """
    r = pack_header.Reader(op, "w_packed", _PACK_OP)
    h = pack_header.read(packed, TAG, VERSION, r, 4 if conv else 2)
    kh, kw = (int(packed.shape[1]), int(packed.shape[2])) if conv else (1, 1)
    cw = words(h.k)
    fields = (kh, kw, cw)
    if h.fields == fields and h.n * kh * kw * cw > (MAX_PACK_BYTES - pack_header.HEADER_BYTES) // 8:
        raise ValueError(f"{op}: w_packed's header (N={h.n}, K={h.k}, kernel {kh}x{kw}) describes a pack of more "
                         f"than 2^62 bytes; repack it with compressops.ops.{_PACK_OP}")
    pack_header.check_layout(h, fields, packed, pack_rows(h.n, kh, kw, conv), packed_bytes(h.n, kh, kw, cw), r)
    return PackInfo(h.n, h.k, kh, kw, cw)


def unpack_weight(packed: torch.Tensor, op: str = "binary_unpack_weight", conv: bool = True,
                  info: PackInfo | None = None) -> torch.Tensor:
    """The canonical weight_bits of a pack, int64 [OC, KH, KW, CW] (conv) or [OUT, CW] (linear): a
    view into the pack (a copy only when the pack's storage is not 8-byte aligned).

    `info`: what the header holds, from a caller that knows it already (the layer that holds the
    pack; the packed kernel checked it on this call's forward). Then neither the header nor the
    storage offset is read, since torch.compile can trace neither (the first is tensor data): the
    result is always a copy.
    """
    p = read_header(packed, op, conv) if info is None else info
    start = pack_header.HEADER_BYTES
    body = packed.view(-1)[start:start + 8 * p.n * p.kh * p.kw * p.cw]
    if info is not None or body.storage_offset() % 8:
        body = body.clone()
    shape = (p.n, p.kh, p.kw, p.cw) if conv else (p.n, p.cw)
    return body.view(torch.int64).view(shape)


# ---------------------------------------------------------------------------------------------
# validation of the binary ops (reference, fake and kernels alike). On fake tensors the pack's
# header cannot be read: its leading dims give OC, KH and KW, and C stays unknown.

def check_pack_activation(x: torch.Tensor, op: str = "binary_pack_activation") -> None:
    """x: float, 4-D NCHW with at least one channel, or any other rank with a non-empty last dim."""
    check_x(x, op)
    if x.dim() == 4:
        torch._check_value(x.shape[1] >= 1, lambda: f"{op}: x must have at least one channel, got shape "
                                                    f"{tuple(x.shape)}")
    else:
        torch._check_value(x.shape[-1] >= 1, lambda: f"{op}: x must have a non-empty last dimension, got shape "
                                                     f"{tuple(x.shape)}")


def _read_operands(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                   bias: torch.Tensor | None, conv: bool) -> PackInfo:
    """The checks binary_conv2d, binary_conv2d_packed and binary_linear share: the pack, then
    x_packed (int64, [N, H, W, CW] or [..., CW] with CW from the pack's K), alpha float32 [OC],
    bias [OC], then the pad bits of w_packed and x_packed. On fake tensors C is 0 (unknown) and CW
    is x_packed's."""
    check_devices(op, "x_packed", x_packed, {"w_packed": w_packed, "alpha": alpha, "bias": bias})
    r = pack_header.Reader(op, "w_packed", _PACK_OP)
    if is_fake(w_packed):
        rows = pack_header.check_rows(w_packed, r, 4 if conv else 2)
        kh, kw = (rows[1], rows[2]) if conv else (1, 1)
        p = PackInfo(rows[0], 0, kh, kw, x_packed.shape[-1] if x_packed.dim() else 0)
    else:
        p = read_header(w_packed, op, conv)
    layout = "[N, H, W, " if conv else "[..., "
    ok = x_packed.dtype == torch.int64 and (x_packed.dim() == 4 if conv else x_packed.dim() >= 1)
    ok = ok and x_packed.shape[-1] == p.cw
    torch._check_value(ok, lambda: f"{op}: x_packed must be int64 {layout}{p.cw}] (ceil(C/64) words for w_packed's "
                                   f"C={p.c}) from compressops.ops.binary_pack_activation, got {x_packed.dtype} "
                                   f"{_dims(x_packed.shape)}")
    ok = alpha.dtype == torch.float32 and alpha.dim() == 1 and alpha.shape[0] == p.n
    torch._check_value(ok, lambda: f"{op}: alpha must be float32 of shape [{p.n}], got {alpha.dtype} "
                                   f"{_dims(alpha.shape)}")
    check_bias(bias, p.n, op, shape="[{n}]")
    if not is_fake(w_packed):
        check_pad_bits(unpack_weight(w_packed, op, conv), p.c, "w_packed", op)
    check_pad_bits(x_packed, p.c, "x_packed", op)
    return p


@dataclass(frozen=True)
class ConvShape:
    """A checked binary conv: the pack's fields and the output size [N, OC, OH, OW]."""

    pack: PackInfo
    n: int
    oh: int
    ow: int


def check_conv2d(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, stride, padding) -> ConvShape:
    """The validation of binary_conv2d and binary_conv2d_packed (reference and fake kernels).

    Args:
        x_packed: int64 [N, H, W, CW] from binary_pack_activation.
        w_packed: uint8 (OC, KH, KW, R) from binary_pack_weight.
        alpha: float32 [OC].
        bias: optional float [OC].
        stride (Sequence[int]): two ints.
        padding (Sequence[int]): two ints.
    Returns:
        the pack's fields and the output size.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    p = _read_operands(op, x_packed, w_packed, alpha, bias, conv=True)
    stride, padding = [int(s) for s in stride], [int(s) for s in padding]
    torch._check_value(len(stride) == 2 and len(padding) == 2,
                       lambda: f"{op}: stride and padding must have two values each, got {stride}, {padding}")
    torch._check_value(min(stride) >= 1 and min(padding) >= 0,
                       lambda: f"{op}: stride must be >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    h, w = x_packed.shape[1], x_packed.shape[2]

    def small():
        return f"{op}: the padded input ({h}x{w} + padding {padding}) is smaller than the kernel {p.kh}x{p.kw}"

    # Separate checks: one SymBool each, so symbolic sizes are never forced to a value.
    torch._check_value(h + 2 * padding[0] >= p.kh, small)
    torch._check_value(w + 2 * padding[1] >= p.kw, small)
    oh = (h + 2 * padding[0] - p.kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - p.kw) // stride[1] + 1
    return ConvShape(p, x_packed.shape[0], oh, ow)


def check_linear(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype | None) -> tuple[PackInfo, torch.dtype]:
    """The validation of binary_linear (reference and fake kernels).

    Args:
        x_packed: int64 [..., CW] from binary_pack_activation.
        w_packed: uint8 (OUT, R) from binary_pack_weight.
        alpha: float32 [OUT].
        bias: optional float [OUT].
        out_dtype: float32/bfloat16/float16 or None (float32: x_packed carries no float dtype).
    Returns:
        (the pack's fields, the output dtype).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    p = _read_operands(op, x_packed, w_packed, alpha, bias, conv=False)
    return p, resolve_out_dtype(x_packed, out_dtype or torch.float32, op)
