"""The 2:4 semi-structured sparse linear format (DESIGN.md section 4).

Canonical (what state_dict and files hold):
    values  [N, Kp/2]          float32, bfloat16 or int8; the 2 kept weights of every group of 4
                               along K, in K order (values[n, 2g] is the lower position of group g)
    meta    uint8 [N, ceil(Kp/8)]
                               2-bit positions (0..3, within the group), 4 bits per group, 2 groups
                               per byte: byte j holds group 2j in its low nibble and group 2j+1 in
                               its high nibble; within a nibble bits 0-1 are the position of the
                               first kept value and bits 2-3 the position of the second.
    scale   float32 [N]        int8 values only: W ~= values * scale[:, None] (symmetric per channel)
where Kp = K rounded up to a multiple of 4; the padded columns are zero weights (positions 0 and 1,
values 0), and an unused high nibble of the last byte is 0.

Pruning keeps the 2 largest |w| in every group of 4 (ties: the lower position), so a weight that
already has at most 2 nonzeros in every group keeps exactly its pattern and values.
The kernels accept any meta bits: a group whose two positions coincide adds both values at that
position (the reference does the same with scatter_add).
"""

from __future__ import annotations

import torch

from .checks import check_bias, check_k, check_scale, check_x, resolve_out_dtype

MAX_INT8_K = 262144  # int8 values: the K/2 kept products sum exactly in int32 (MAX_INT8_K / 2 * 127 * 127 < 2**31)


def padded_k(k: int) -> int:
    return (k + 3) // 4 * 4


def meta_bytes(k: int) -> int:
    """Bytes of metadata per output row for K = k."""
    return (padded_k(k) // 4 + 1) // 2


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """bool mask [N, K]: True for the 2 largest |w| of every group of 4 along K (ties: lower index)."""
    n, k = weight.shape
    kp = padded_k(k)
    a = torch.zeros(n, kp, dtype=torch.float32, device=weight.device)
    a[:, :k] = weight.detach().abs().float()
    g = a.view(n, kp // 4, 4)
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :2]
    m = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, order, True)
    return m.view(n, kp)[:, :k].contiguous()


def _positions(weight: torch.Tensor) -> torch.Tensor:
    """int64 [N, Kp/4, 2]: ascending kept positions of every group."""
    n, k = weight.shape
    kp = padded_k(k)
    a = torch.zeros(n, kp, dtype=torch.float32, device=weight.device)
    a[:, :k] = weight.detach().abs().float()
    g = a.view(n, kp // 4, 4)
    order = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :2]
    return order.sort(dim=-1).values


def compress(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a float weight [N, K] to 2:4 by magnitude and pack it.

    Returns:
        (values [N, Kp/2] in weight's dtype (float32 or bfloat16; other float dtypes become float32),
         meta uint8 [N, meta_bytes(K)]).
    Raises:
        ValueError: not a 2-D float tensor, or NaN/Inf weights.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach()
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}: weight holds NaN/Inf values; 2:4 pruning needs finite weights")
    dtype = w.dtype if w.dtype in (torch.float32, torch.bfloat16) else torch.float32
    n, k = w.shape
    kp = padded_k(k)
    pos = _positions(w)  # [N, G, 2]
    wp = torch.zeros(n, kp, dtype=dtype, device=w.device)
    wp[:, :k] = w.to(dtype)
    values = wp.view(n, kp // 4, 4).gather(-1, pos).reshape(n, kp // 2).contiguous()
    return values, pack_meta(pos)


def pack_meta(pos: torch.Tensor) -> torch.Tensor:
    """int [N, G, 2] positions (0..3) -> uint8 meta [N, ceil(G/2)] (bit order in the module docstring)."""
    n, g, _ = pos.shape
    nib = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.int32)  # [N, G]
    if g % 2:
        nib = torch.cat([nib, nib.new_zeros(n, 1)], dim=1)
    byte = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return byte.to(torch.uint8).contiguous()


def unpack_positions(meta: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 meta [N, meta_bytes(K)] -> int64 absolute column of every kept value [N, Kp/2]."""
    n = meta.shape[0]
    groups = padded_k(k) // 4
    m = meta.to(torch.int64)
    nib = torch.stack([m & 0xF, m >> 4], dim=-1).reshape(n, -1)[:, :groups]
    pos = torch.stack([nib & 3, (nib >> 2) & 3], dim=-1)  # [N, G, 2]
    base = torch.arange(groups, device=meta.device).view(1, groups, 1) * 4
    return (pos + base).reshape(n, groups * 2)


def decompress(values: torch.Tensor, meta: torch.Tensor, k: int, dtype=torch.float32) -> torch.Tensor:
    """Dense [N, K] weight (values summed where a group's positions coincide), in `dtype`."""
    n = values.shape[0]
    cols = unpack_positions(meta, k)
    dense = torch.zeros(n, padded_k(k), dtype=dtype, device=values.device)
    dense.scatter_add_(1, cols, values.to(dtype))
    return dense[:, :k].contiguous()


def quantize_values(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of the kept values: (int8 [N, Kp/2] in [-127, 127], scale float32 [N])."""
    v = values.float()
    amax = v.abs().amax(dim=1)
    scale = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    q = torch.round(v * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def check_linear(op: str, x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None = None, w_scale: torch.Tensor | None = None):
    """The validation of sparse24_linear (float kept values) and, when w_scale is given,
    sparse24_int8_linear (int8 kept values and their float32 [N] scales).

    Used by the reference, the fake and the Triton kernels; it reads no data, so it runs in full
    on fake tensors.

    Returns:
        (N, K, output dtype = x.dtype).
    Raises:
        ValueError naming the argument.
    """
    check_x(x, op)
    int8 = w_scale is not None
    k = int(in_features)
    torch._check_value(k >= 1 and (not int8 or k <= MAX_INT8_K),
                       lambda: f"{op}: in_features must be >= 1 (and <= {MAX_INT8_K} for int8 values: exact int32 "
                               f"sums), got {k}")
    want = (torch.int8,) if int8 else (torch.float32, torch.bfloat16)
    half = padded_k(k) // 2
    torch._check_value(values.dtype in want and values.dim() == 2 and values.shape[1] == half,
                       lambda: f"{op}: values must be {'/'.join(str(t) for t in want)} of shape [N, {half}] "
                               f"for in_features={k}, got {values.dtype} {tuple(values.shape)}")
    n, mb = values.shape[0], meta_bytes(k)
    torch._check_value(meta.dtype == torch.uint8 and meta.dim() == 2 and meta.shape[0] == n and meta.shape[1] == mb,
                       lambda: f"{op}: meta must be uint8 of shape [N, {mb}] = [{n}, {mb}], got {meta.dtype} "
                               f"{tuple(meta.shape)}")
    check_k(x, k, op, "in_features")
    check_bias(bias, n, op)
    if int8:
        check_scale(w_scale, n, op)
    return n, k, resolve_out_dtype(x, None, op)
