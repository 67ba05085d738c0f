"""The binary (sign-bit) format: XNOR-popcount convolution and linear layers.

Canonical (what state_dict and files hold; the same on every device):
    weight_bits  int64   conv: [OC, KH, KW, CW], linear: [OUT, CW], CW = ceil(C / 64)
                 sign(w) bit-packed along input channels: channel c of a tap is bit (c % 64) of
                 word c // 64, least significant bit first; bit 1 = +1 (w >= 0, so sign(0) = +1),
                 bit 0 = -1. Bits of channels >= C in the last word (channel padding) are 0.
    alpha        float32 [OC]  per output channel, alpha = mean |w| over (C, KH, KW)
    bias         float32 [OC]  optional

Activations are binarized at run time with the same rule (x >= 0 -> bit 1, so sign(0) = +1 and
NaN -> -1) and packed channels-last: [N, H, W, CW] int64 (conv) or [..., CW] (linear), channel
padding bits 0. The kernels rely on those pad bits being 0 in both operands (their XOR is then 0,
so they never count); binary_pack_activation always writes them as 0.

The layer computes, for every output position,
    y = alpha * (matches - mismatches) + bias = alpha * (valid_bits - 2 * popcount(x XOR w)) + bias
where valid_bits = C * (number of kernel taps inside the image): taps that fall in the zero
spatial padding contribute 0, exactly as conv2d(sign(x), sign(w)) with zero padding does.
The weight is 32x smaller than fp32 (plus one fp32 scale per output channel).
"""

from __future__ import annotations

import torch

from .checks import check_bias, check_x

WORD_BITS = 64


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
    if not torch.isfinite(w).all():
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


def dequantize(weight_bits: torch.Tensor, alpha: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The float32 weight alpha * sign(w) this format computes with."""
    s = weight_signs(weight_bits, in_channels)
    return s * alpha.reshape(-1, *([1] * (s.dim() - 1)))


# ---------------------------------------------------------------------------------------------
# validation of the binary ops (reference, fake and kernels alike; no check reads data, so
# every one runs in full on fake tensors)

def check_pack_activation(x: torch.Tensor, op: str = "binary_pack_activation") -> None:
    """x: float, 4-D NCHW with at least one channel, or any other rank with a non-empty last dim."""
    check_x(x, op)
    if x.dim() == 4:
        torch._check_value(x.shape[1] >= 1, lambda: f"{op}: x must have at least one channel, got shape "
                                                    f"{tuple(x.shape)}")
    else:
        torch._check_value(x.shape[-1] >= 1, lambda: f"{op}: x must have a non-empty last dimension, got shape "
                                                     f"{tuple(x.shape)}")


def check_operands(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                   bias: torch.Tensor | None, c: int, w_dims: int) -> None:
    """Checks shared by the binary conv and linear ops: c valid channel bits per tap, packed
    operands with ceil(c/64) words last, w_packed w_dims-D, alpha float32 [OC], bias [OC]."""
    torch._check_value(c >= 1, lambda: f"{op}: in_channels/in_features must be >= 1, got {c}")
    cw = words(c)
    torch._check_value(x_packed.dtype == torch.int64 and x_packed.dim() >= 1 and x_packed.shape[-1] == cw,
                       lambda: f"{op}: x_packed must be int64 with last dimension ceil(C/64) = {cw}, got "
                               f"{x_packed.dtype} {tuple(x_packed.shape)}")
    torch._check_value(w_packed.dtype == torch.int64 and w_packed.dim() == w_dims and w_packed.shape[-1] == cw,
                       lambda: f"{op}: w_packed must be int64 {w_dims}-D with last dimension {cw}, got "
                               f"{w_packed.dtype} {tuple(w_packed.shape)}")
    oc = w_packed.shape[0]
    torch._check_value(alpha.dtype == torch.float32 and alpha.dim() == 1 and alpha.shape[0] == oc,
                       lambda: f"{op}: alpha must be float32 of shape [{oc}], got {alpha.dtype} {tuple(alpha.shape)}")
    check_bias(bias, oc, op, shape="[{n}]")


def check_conv2d(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, in_channels: int, kernel_size, stride, padding) -> tuple:
    """The validation of binary_conv2d and binary_conv2d_packed.

    Returns:
        (N, OC, OH, OW) of the output.
    Raises:
        ValueError naming the argument.
    """
    check_operands(op, x_packed, w_packed, alpha, bias, in_channels, 4)
    torch._check_value(x_packed.dim() == 4, lambda: f"{op}: x_packed must be 4-D [N, H, W, CW], got "
                                                    f"{tuple(x_packed.shape)}")
    kh, kw = kernel_size
    torch._check_value(w_packed.shape[1] == kh and w_packed.shape[2] == kw,
                       lambda: f"{op}: w_packed has taps {tuple(w_packed.shape[1:3])} but kernel_size is {(kh, kw)}")
    torch._check_value(min(stride) >= 1 and min(padding) >= 0,
                       lambda: f"{op}: stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    oh = (x_packed.shape[1] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x_packed.shape[2] + 2 * padding[1] - kw) // stride[1] + 1
    return x_packed.shape[0], w_packed.shape[0], oh, ow


def check_linear(op: str, x_packed: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int) -> int:
    """The validation of binary_linear. Returns OUT (the number of output features)."""
    check_operands(op, x_packed, w_packed, alpha, bias, in_features, 2)
    return w_packed.shape[0]
