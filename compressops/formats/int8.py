"""The int8 linear format.

Canonical (what state_dict and files hold; the same on every device):
    weight        int8    [N, K]  row-major, values in [-127, 127] (symmetric: -128 is never used)
    weight_scale  float32 [N]     per output channel; W ~= weight * weight_scale[:, None]
    act_scale     float32 []      only for static activation quantization

Prepacked (CPU kernels; built from the canonical weight, never serialized), a 1-D uint8 tensor:
    header    64 bytes: int32 magic, version, N, K, N_pad, K_pad, NR=16, KR=4, 8 reserved
    weights   int8 [N_pad/16][K_pad/4][16][4]: 16 output channels side by side, 4 consecutive k
              per lane (the operand shape of vpdpbusd / vpmaddubsw); zero padded
    col_sums  int32 [N_pad]: sum over k of each padded column
csrc/common/int8_layout.h defines the same layout for C++; tests check both packers agree byte
for byte.
"""

from __future__ import annotations

import torch

MAGIC = 0x38493843
VERSION = 1
NR = 16
KR = 4
HEADER_BYTES = 64
MAX_K = 131072  # int32 accumulation stays exact: MAX_K * 127 * 127 < 2**31


def _round_up(v, m):
    return (v + m - 1) // m * m


def packed_bytes(n, k):
    """Size in bytes of the prepacked buffer for an [n, k] weight (works on SymInts)."""
    n_pad, k_pad = _round_up(n, NR), _round_up(k, KR)
    return HEADER_BYTES + n_pad * k_pad + 4 * n_pad


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
    if not torch.isfinite(w).all():
        bad = (~torch.isfinite(w)).sum().item()
        raise ValueError(f"{name}: weight holds {bad} NaN/Inf values; int8 quantization needs finite weights")
    amax = w.abs().amax(dim=1)
    scale = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    w_q = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return w_q, scale


def pack_weight(w_q: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch packer (the reference for compressops.ops.int8_pack_weight).

    Args:
        w_q: int8 [N, K], values in [-127, 127].
    Returns:
        uint8 [packed_bytes(N, K)] in the prepacked layout of this module's docstring.
    """
    check_weight(w_q, "int8_pack_weight")
    n, k = w_q.shape
    n_pad, k_pad = _round_up(n, NR), _round_up(k, KR)
    w = torch.zeros(n_pad, k_pad, dtype=torch.int8, device=w_q.device)
    w[:n, :k] = w_q
    blocks = w.view(n_pad // NR, NR, k_pad // KR, KR).permute(0, 2, 1, 3).contiguous()
    col_sums = w.to(torch.int32).sum(dim=1, dtype=torch.int32)
    header = torch.zeros(16, dtype=torch.int32, device=w_q.device)
    header[:8] = torch.tensor([MAGIC, VERSION, n, k, n_pad, k_pad, NR, KR], dtype=torch.int32)
    return torch.cat([header.view(torch.uint8), blocks.view(-1).view(torch.uint8), col_sums.view(torch.uint8)])


def read_header(w_packed: torch.Tensor, op: str = "int8") -> dict:
    """Parse and validate the header of a prepacked buffer; returns its fields as ints."""
    if w_packed.dtype != torch.uint8 or w_packed.dim() != 1 or w_packed.numel() < HEADER_BYTES:
        raise ValueError(
            f"{op}: w_packed must be a 1-D uint8 tensor from compressops.ops.int8_pack_weight, "
            f"got {w_packed.dtype} of shape {tuple(w_packed.shape)}"
        )
    h = w_packed[:HEADER_BYTES].clone().view(torch.int32).tolist()
    magic, version, n, k, n_pad, k_pad, nr, kr = h[:8]
    if magic != MAGIC or version != VERSION or nr != NR or kr != KR:
        raise ValueError(f"{op}: w_packed does not hold an int8 pack (version {VERSION}); repack it")
    if w_packed.numel() != packed_bytes(n, k):
        raise ValueError(f"{op}: w_packed has {w_packed.numel()} bytes but its header (N={n}, K={k}) "
                         f"needs {packed_bytes(n, k)}")
    return {"n": n, "k": k, "n_pad": n_pad, "k_pad": k_pad}


def unpack_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_weight: uint8 prepacked buffer -> int8 [N, K]."""
    h = read_header(w_packed)
    n, k, n_pad, k_pad = h["n"], h["k"], h["n_pad"], h["k_pad"]
    body = w_packed[HEADER_BYTES:HEADER_BYTES + n_pad * k_pad].view(torch.int8)
    w = body.view(n_pad // NR, k_pad // KR, NR, KR).permute(0, 2, 1, 3).reshape(n_pad, k_pad)
    return w[:n, :k].contiguous()


def check_weight(w_q: torch.Tensor, op: str) -> None:
    """Raise ValueError unless w_q is a packable int8 [N, K] weight."""
    if w_q.dtype != torch.int8:
        raise ValueError(f"{op}: w_q must be int8, got {w_q.dtype}")
    if w_q.dim() != 2:
        raise ValueError(f"{op}: w_q must be 2-D [N, K], got shape {tuple(w_q.shape)}")
    if w_q.shape[0] < 1 or not 1 <= w_q.shape[1] <= MAX_K:
        raise ValueError(f"{op}: w_q needs N >= 1 and 1 <= K <= {MAX_K} (int32 accumulation), "
                         f"got {tuple(w_q.shape)}")
    if w_q.numel() and int(w_q.min()) < -127:
        raise ValueError(f"{op}: w_q must lie in [-127, 127] (symmetric int8); found -128")
