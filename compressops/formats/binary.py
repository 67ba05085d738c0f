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
