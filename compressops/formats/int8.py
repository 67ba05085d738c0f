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

from .checks import check_bias, check_k, check_packed, check_scale, check_x, is_fake, resolve_out_dtype

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
    if not is_fake(w_q) and w_q.numel() and int(w_q.min()) < -127:  # data: skipped by the fake kernel
        raise ValueError(f"{op}: w_q must lie in [-127, 127] (symmetric int8); found -128")


def check_act_scale(act_scale: torch.Tensor | None, op: str) -> None:
    """Raise ValueError unless act_scale is None or a one-element float tensor, finite and positive.

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
        raise ValueError(f"{op}: act_scale must be finite and positive, got {float(s)}")


def check_activation(x: torch.Tensor, act_scale: torch.Tensor | None, op: str = "int8_quantize_activation") -> None:
    """The validation of compressops.ops.int8_quantize_activation: float x (..., K), act_scale as
    check_act_scale accepts it."""
    check_x(x, op)
    check_act_scale(act_scale, op)


def quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of the rows of x (last dimension): the math of
    compressops.ops.int8_quantize_activation, which every int8 activation path shares.

    Dynamic (act_scale None), per row: amax = max|x|; scale = amax / 127;
    q = round_half_even(clamp(x * (127 / amax), -127, 127)). A row with amax 0 gets scale 0 and
    q 0; a row holding NaN/Inf gets scale NaN and q 0 (so its linear output is NaN).
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
        usable = finite & (amax > 0)
        safe = torch.where(usable, amax, torch.ones_like(amax))
        scale = torch.where(finite, torch.div(amax, torch.full_like(amax, 127.0)),
                            torch.full_like(amax, float("nan")))
        inv = torch.where(usable, torch.div(torch.full_like(safe, 127.0), safe), torch.zeros_like(safe))
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
        acc: int32 [M, N] exact integer sums. x_scale: float32 [M] or (...) with M elements.
        w_scale: float32 [N]. bias: optional float [N]. out_dtype: the result's dtype.
        shape: the output shape (..., N).
    """
    y = acc.float() * (x_scale.reshape(-1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype).reshape(shape)


def check_linear(op: str, x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                 act_scale: torch.Tensor | None = None) -> tuple[int, int, torch.dtype]:
    """The validation of int8_linear and int8_weight_only_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K). w_packed: uint8 from int8_pack_weight. w_scale: float32 [N].
        bias: optional float [N]. out_dtype: float32/bfloat16/float16 or None (x.dtype).
        act_scale: int8_linear's optional static activation scale.
    Returns:
        (N, K, output dtype).
    Raises:
        ValueError naming the argument.
    """
    check_x(x, op)
    if is_fake(w_packed):
        # The header is data: N and K come from w_scale and x here, and the kernel reads the
        # header when it runs on real tensors.
        check_packed(w_packed, op, "w_packed", "int8_pack_weight", HEADER_BYTES)
        n, k = (w_scale.shape[0] if w_scale.dim() == 1 else "?"), x.shape[-1]
    else:
        h = read_header(w_packed, op)
        n, k = h["n"], h["k"]
    check_k(x, k, op, "the weight has K")
    check_scale(w_scale, n, op)
    check_bias(bias, n, op)
    out_t = resolve_out_dtype(x, out_dtype, op)
    check_act_scale(act_scale, op)
    return n, k, out_t
