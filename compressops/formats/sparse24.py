"""The 2:4 semi-structured sparse linear format (DESIGN.md section 4).

Canonical, version 1 (what state_dict and files hold; the same on every device):

    values  [N, Kp/2]          float32, bfloat16 or int8 (in [-127, 127]: symmetric, -128 is refused
                               by the pack op and on load); the 2 kept weights of every group of 4
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
position (the reference does the same with scatter_add), and a position in the padded columns
multiplies a zero activation.

Packed, version 1 (compressops.ops.sparse24_pack; built from the canonical values and meta, never
saved; the int8 scales and the bias stay separate tensors):

    header  64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "sparse24",
            version 1, N, K (in_features, unpadded), family fields (values dtype code, Kp, 0) with
            the codes of VALUE_DTYPES (1 float32, 2 bfloat16, 3 int8)
    values  the canonical values' bytes, row-major [N, Kp/2]: N * Kp/2 * itemsize bytes
    meta    the canonical meta's bytes, row-major uint8 [N, meta_bytes(K)]
    shape   uint8 [N, ceil(packed_bytes(N, K, dtype) / N)] (pack_header.pack_shape), zero padded
The kernels walk each output row's values and meta once per block of batch rows, in the canonical
order, so the pack adds only the header; values start at byte 64 of the storage, aligned for every
dtype. The pack's first dimension is N, which is how the fake kernels (they cannot read the header)
know the output shape. Zero layout bytes are the pack of the all-zero weight (values 0; meta 0 puts
both kept values of every group at position 0, both zero), so a module skeleton holds zero_pack
instead of running the pack op.
The ops check the header on every call (memory safety); int8 values are checked at pack time and on
load, not per call (a scan as long as the product at batch 1): a pack whose payload was edited to hold
-128 reads nothing out of bounds but gives different values on different ISA levels.

sparse24_linear computes y = x @ W.T + bias in float32 (bfloat16 values are exact in float32), then
rounds to the output dtype; sparse24_int8_linear quantizes x per row to int8 (as
compressops.ops.int8_quantize_activation), sums exactly in int32 and applies the W8A8 epilogue of
compressops/formats/int8.py, so it is bit-identical to the reference.
"""

from __future__ import annotations

import torch

from . import pack_header
from .checks import all_finite, check_bias, check_devices, check_k, check_scale, check_x, is_fake, resolve_out_dtype

MAX_INT8_K = 262144  # int8 values: the K/2 kept products sum exactly in int32 (MAX_INT8_K / 2 * 127 * 127 < 2**31)
TAG = "sparse24"
VERSION = 1
# The pack header's first family field: which dtype the values are (0 is no dtype, so a zeroed
# field never passes for one).
VALUE_DTYPES = {1: torch.float32, 2: torch.bfloat16, 3: torch.int8}
_CODES = {dtype: code for code, dtype in VALUE_DTYPES.items()}
FLOAT_VALUES = (torch.float32, torch.bfloat16)
_PACK_OP = "sparse24_pack"


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
    # What a stable descending sort of each group keeps (its first two), without sorting 4-element
    # rows one by one: element i's rank is the number of elements before it that are >= it plus
    # those after it that are > it; ranks 0 and 1 are kept.
    v = g.permute(2, 0, 1).contiguous()  # [4, N, G]: each position's values contiguous

    def beats(j, i):  # whether element j ranks before element i
        return (v[j] >= v[i]) if j < i else (v[j] > v[i])

    keep = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        rank = beats(others[0], i).to(torch.uint8).add_(beats(others[1], i)).add_(beats(others[2], i))
        keep.append(rank < 2)
    # exactly two of the four are kept: the first is at 0, 1 or 2, the second at 1, 2 or 3
    skip0, skip01 = ~keep[0], ~(keep[0] | keep[1])
    first = skip0.to(torch.uint8).add_(skip01)  # 0 if 0 is kept, else 1 if 1 is, else 2
    second = (keep[2] | keep[3]).to(torch.uint8).add_(keep[3]).add_(1)  # 3 if 3 is kept, else 2 if 2 is, else 1
    return torch.stack([first, second], dim=-1).to(torch.int64)


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
    if not all_finite(w):
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


def packed_bytes(n, k: int, dtype: torch.dtype):
    """Bytes of the pack of an [n, k] weight with `dtype` values, before row padding (works on SymInts)."""
    return pack_header.HEADER_BYTES + n * (padded_k(k) // 2 * dtype.itemsize + meta_bytes(k))


def fields(k: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """The pack header's family fields for K = k and `dtype` values."""
    return (_CODES[dtype], padded_k(k), 0)


def zero_pack(n: int, k: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The pack of the all-zero [n, k] weight (zero values and zero meta), built without the pack op."""
    return pack_header.zeros(TAG, VERSION, (n,), n, k, fields(k, dtype), packed_bytes(n, k, dtype), device=device)


def check_pack(op: str, values: torch.Tensor, meta: torch.Tensor, in_features: int) -> None:
    """The validation of sparse24_pack: values float32/bfloat16/int8 [N, Kp/2] with 1 <= N < 2^31,
    meta uint8 [N, meta_bytes(K)], 1 <= K < 2^31 (K <= MAX_INT8_K for int8 values).

    Reads no data, so it runs in full on fake tensors.

    Raises:
        ValueError: an invalid argument; the message names it.
    """
    k = int(in_features)
    check_devices(op, "values", values, {"meta": meta})
    torch._check_value(values.dtype in _CODES,
                       lambda: f"{op}: values must be float32, bfloat16 or int8, got {values.dtype}")
    torch._check_value(1 <= k < pack_header.MAX_DIM, lambda: f"{op}: in_features must be in [1, 2^31), got {k}")
    torch._check_value(values.dtype != torch.int8 or k <= MAX_INT8_K,
                       lambda: f"{op}: in_features must be <= {MAX_INT8_K} for int8 values (exact int32 sums), "
                               f"got {k}")
    half = padded_k(k) // 2

    def bad_values():
        return f"{op}: values must have shape [N, {half}] for in_features={k}, 1 <= N < 2^31, got {tuple(values.shape)}"

    torch._check_value(values.dim() == 2, bad_values)
    torch._check_value(values.shape[1] == half, bad_values)
    torch._check_value(values.shape[0] >= 1, bad_values)
    torch._check_value(values.shape[0] < pack_header.MAX_DIM, bad_values)
    n, mb = values.shape[0], meta_bytes(k)

    def bad_meta():
        return f"{op}: meta must be uint8 of shape [N, {mb}] = [{n}, {mb}], got {meta.dtype} {tuple(meta.shape)}"

    torch._check_value(meta.dtype == torch.uint8, bad_meta)
    torch._check_value(meta.dim() == 2, bad_meta)
    torch._check_value(meta.shape[0] == n, bad_meta)
    torch._check_value(meta.shape[1] == mb, bad_meta)


def has_int8_min(values: torch.Tensor) -> bool:
    """True when int8 `values` hold -128, which the symmetric int8 format excludes: the kernels'
    int8 paths (and the int8 GEMM of the dense route) assume [-127, 127]. False for float values
    and for tensors without data."""
    return values.dtype == torch.int8 and not is_fake(values) and values.numel() > 0 and int(values.min()) == -128


def pack(values: torch.Tensor, meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.sparse24_pack).

    Args:
        values: float32/bfloat16/int8 [N, Kp/2] (int8 in [-127, 127]); meta: uint8 [N, meta_bytes(K)];
            in_features: K.
    Returns:
        uint8 [N, ceil(packed_bytes(N, K, values.dtype) / N)]: the header, values' bytes, meta's
        bytes, zero padding (layout in the module docstring).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_pack(_PACK_OP, values, meta, in_features)
    if has_int8_min(values):
        raise ValueError(f"{_PACK_OP}: int8 values must lie in [-127, 127] (symmetric int8), got -128")
    n, k = values.shape[0], int(in_features)
    header = pack_header.make(TAG, VERSION, n, k, fields(k, values.dtype), device=values.device)
    body = [header, values.contiguous().view(-1).view(torch.uint8), meta.contiguous().view(-1)]
    return pack_header.shaped(torch.cat(body), (n,))


def read_header(packed: torch.Tensor, op: str, takes: tuple[torch.dtype, ...] | None = None
                ) -> tuple[int, int, torch.dtype]:
    """(N, K, values dtype) of a 2:4 pack, after checking every header field and the size.

    Args:
        takes: the values dtypes `op` accepts (None: any).
    Raises:
        ValueError: not a valid pack; the message names `op` and "packed".
    """
    r = pack_header.Reader(op, "packed", _PACK_OP)
    h = pack_header.read(packed, TAG, VERSION, r)
    code = h.fields[0]
    if code not in VALUE_DTYPES:
        raise ValueError(f"{op}: packed's header has values dtype code {code}, not one of 1 (float32), "
                         f"2 (bfloat16), 3 (int8); repack it with compressops.ops.{_PACK_OP}")
    dtype = VALUE_DTYPES[code]
    if takes is not None and dtype not in takes:
        raise ValueError(f"{op}: packed holds {_name(dtype)} values; {op} takes {' or '.join(map(_name, takes))} "
                         f"values")
    nbytes = packed_bytes(h.n, h.k, dtype)
    if nbytes >= 2**63:  # N and K near 2^31: no tensor holds that many bytes (and C++ would overflow)
        raise ValueError(f"{op}: packed has shape [{', '.join(map(str, packed.shape))}] but its header "
                         f"(N={h.n}, K={h.k}) needs more than 2^63 bytes")
    pack_header.check_layout(h, fields(h.k, dtype), packed, (h.n,), nbytes, r)
    if dtype == torch.int8 and h.k > MAX_INT8_K:  # sparse24_pack refuses such a pack; a forged one ends here
        raise ValueError(f"{op}: packed has K={h.k}; int8 values allow K <= {MAX_INT8_K} (exact int32 sums)")
    return h.n, h.k, dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def views(packed: torch.Tensor, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, Kp/2] of `dtype`, meta uint8 [N, meta_bytes(K)]): views into a pack whose header
    read_header has checked (it returned n, k and dtype), no copy."""
    flat = packed.view(-1)
    start, vbytes = pack_header.HEADER_BYTES, n * (padded_k(k) // 2) * dtype.itemsize
    values = flat[start:start + vbytes].view(dtype).view(n, padded_k(k) // 2)
    meta = flat[start + vbytes:start + vbytes + n * meta_bytes(k)].view(n, meta_bytes(k))
    return values, meta


def unpack(packed: torch.Tensor, op: str = "sparse24_unpack") -> tuple[torch.Tensor, torch.Tensor, int]:
    """(values, meta, in_features) of a pack: the canonical tensors as views into it, no copy.

    Raises:
        ValueError: the header or the size is not a 2:4 pack\'s; the message names `op` and "packed".
    """
    n, k, dtype = read_header(packed, op)
    return (*views(packed, n, k, dtype), k)


def dense_weight(op: str, packed: torch.Tensor, w_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 dense weight [N, K] of a pack (float values), or of an int8 pack and its scales
    (values * w_scale[:, None])."""
    n, k, dtype = read_header(packed, op)
    w = decompress(*views(packed, n, k, dtype), k, torch.float32)
    return w if w_scale is None else w * w_scale.float()[:, None]


def _check(op: str, x: torch.Tensor, packed: torch.Tensor, takes: tuple[torch.dtype, ...],
           bias: torch.Tensor | None, w_scale: torch.Tensor | None, out_dtype: torch.dtype | None):
    check_x(x, op)
    check_devices(op, "x", x, {"packed": packed, "w_scale": w_scale, "bias": bias})
    if is_fake(packed):
        (n,) = pack_header.check_rows(packed, pack_header.Reader(op, "packed", _PACK_OP), 2)
        k, dtype = x.shape[-1], None
    else:
        n, k, dtype = read_header(packed, op, takes)
        check_k(x, k, op, "the weight has K")
    check_bias(bias, n, op)
    if w_scale is not None:
        check_scale(w_scale, n, op)
    return n, k, resolve_out_dtype(x, out_dtype, op), dtype


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None):
    """The validation of sparse24_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K).
        packed: uint8 from sparse24_pack with float32 or bfloat16 values.
        bias: optional float [N].
        out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        tuple: (N, K, output dtype, values dtype); on fake tensors K is x's and the values dtype
            None (neither can be read from a pack without data).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    return _check(op, x, packed, FLOAT_VALUES, bias, None, out_dtype)


def check_int8_linear(op: str, x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
    """The validation of sparse24_int8_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K).
        packed: uint8 from sparse24_pack with int8 values.
        w_scale: float32 [N].
        bias: optional float [N].
        out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        tuple: (N, K, output dtype, values dtype), as check_linear.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    return _check(op, x, packed, (torch.int8,), bias, w_scale, out_dtype)
