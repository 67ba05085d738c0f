"""The CSR (compressed sparse row) linear format (DESIGN.md section 4).

Canonical, version 3 (what CSRLinear's state_dict and files hold; the same on every device):

    crow    int32 [N+1] when nnz < 2^31, else int64: crow[0] = 0, non-decreasing, crow[N] = nnz
    col     uint16 [nnz] when K <= 65536, else int32: the column of each stored value, in [0, K);
            any order within a row (duplicates are summed)
    values  float32 or bfloat16 [nnz], in crow/col order
    bias    float32 [N], optional
canonical() gives any valid (crow, col) these dtypes; compress() and unpack() return them.
Earlier state_dict versions, which CSRLinear keeps loading: 1 held crow (int32/int64) and col
(int32); 2 held `index`, the uint8 CSR index of compressops 0.1 instead (decode_v2_index).

Packed, version 1 (compressops.ops.csr_pack(crow, col, K); built at load, never saved):

    header  64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "csr",
            version 1, N, K, fields (nnz, col_bytes, col_end): col_bytes = 2 when K <= 65536, else 4;
            col_end = 1 + the largest column (0 when nnz = 0)
    rowptr  int64 [N+1], from byte 64
    cols    uint16 (col_bytes 2) or int32 (col_bytes 4) [nnz], zero padded to a multiple of 8 bytes
    shape   uint8 [N, ceil(packed_bytes / N)] (pack_header.pack_shape), zero padded at the end
The values are not in the pack: csr_linear takes them as a tensor of their own. The pack's first
dimension is N, which is how the fake kernel (it cannot read the header) knows the output shape.
Zero layout bytes (rowptr all zero, no columns) are the pack of the all-zero weight with nnz = 0,
so a module skeleton holds placeholder_pack() instead of running csr_pack.

What csr_linear trusts, and why it may (every level, the dense route and the Triton kernel alike):
- the header: read_header checks every field on every call (the shared ones, 0 <= nnz < 2^48,
  col_bytes against K, 0 <= col_end <= K with col_end = 0 exactly when nnz = 0) and the pack's
  shape. A header that lies in one field cannot move a read: a smaller K than the columns reach
  fails col_end <= K, a K across 65536 fails col_bytes, another N fails the shape, another nnz
  fails the row pointer check.
- the row pointer: re-checked on every call (O(N): it starts at 0, never decreases and ends at
  nnz), so every nonzero index the kernels walk lies inside cols and values.
- the columns: re-checked on every call (check_columns, the last check of check_linear), so a pack
  whose column bytes were edited cannot make a kernel read past x or the dense route write past
  its decoded weight. The CPU kernels fold the check into their first pass: each task takes the
  max of its rows' columns (read as unsigned, so a negative int32 column counts as too large)
  right before it reads them, and a bad one raises after the parallel loop, before the output is
  returned. 16-bit columns with K = 65536 cannot be out of range and are not scanned.
- the column order: not trusted and not needed; every kernel is correct for any order within a row
  (sorted columns, which compress() produces, make the K-tiled kernel faster).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import pack_header
from .checks import all_finite, check_bias, check_devices, check_k, check_x, is_fake, resolve_out_dtype

TAG = "csr"
VERSION = 1
MAX_NNZ = 2**48  # nnz < MAX_NNZ keeps every byte count of a pack far from int64 overflow
VALUE_DTYPES = (torch.float32, torch.bfloat16)
_PACK_OP = "csr_pack"


class Header(NamedTuple):
    """A checked CSR pack header."""

    n: int
    k: int
    nnz: int
    col_bytes: int
    col_end: int


def col_bytes(k):
    """Bytes per column in a pack: 2 when K <= 65536, else 4."""
    return 2 if k <= 65536 else 4


def col_dtype(k: int) -> torch.dtype:
    """The canonical column dtype: uint16 when K <= 65536, else int32."""
    return torch.uint16 if k <= 65536 else torch.int32


def crow_dtype(nnz: int) -> torch.dtype:
    """The canonical row pointer dtype: int32 when nnz < 2^31, else int64."""
    return torch.int32 if nnz < 2**31 else torch.int64


def packed_bytes(n, k, nnz):
    """Bytes of the pack of an [n, k] matrix with nnz stored values, before row padding (works on SymInts)."""
    return pack_header.HEADER_BYTES + 8 * (n + 1) + (col_bytes(k) * nnz + 7) // 8 * 8


def canonical_bytes(n: int, k: int, nnz: int) -> int:
    """Bytes of the canonical crow and col of an [n, k] matrix with nnz stored values."""
    return crow_dtype(nnz).itemsize * (n + 1) + col_dtype(k).itemsize * nnz


def magnitude_mask(weight: torch.Tensor, sparsity: float | None) -> torch.Tensor:
    """bool mask keeping the largest |w| so that a `sparsity` fraction is zero (None: keep nonzeros)."""
    w = weight.detach()
    if sparsity is None:
        return w != 0
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    numel = w.numel()
    drop = int(round(sparsity * numel))
    if drop == 0:
        return w != 0
    thr = w.abs().flatten().float().kthvalue(drop).values
    return (w.abs().float() > thr) & (w != 0)


def compress(weight: torch.Tensor, mask: torch.Tensor | None = None, name: str = "weight"):
    """Float weight [N, K] (and optional keep-mask) -> canonical (crow, col, values).

    Returns:
        tuple: (crow int32/int64 [N+1], col uint16/int32 [nnz] (sorted within each row), values
            [nnz] in weight's dtype when float32/bfloat16, else float32). Without a mask the
            nonzeros are kept.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach()
    if not all_finite(w):
        raise ValueError(f"{name}: weight holds NaN/Inf values")
    dtype = w.dtype if w.dtype in VALUE_DTYPES else torch.float32
    keep = (w != 0) if mask is None else (mask.to(torch.bool) & (w != 0))
    rows, cols = keep.nonzero(as_tuple=True)
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
    crow[1:] = keep.sum(dim=1).cumsum(0)
    crow, col = canonical(crow, cols, w.shape[1])
    return crow, col, w[rows, cols].to(dtype).contiguous()


def canonical(crow: torch.Tensor, col: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow, col) in the canonical dtypes (crow_dtype(nnz), col_dtype(k)); the values must be valid."""
    return crow.to(crow_dtype(col.shape[0])).contiguous(), col.to(col_dtype(k)).contiguous()


def check(crow: torch.Tensor, col: torch.Tensor, k: int, op: str, n: int | None = None,
          names: tuple[str, str] = ("crow", "col")) -> None:
    """Raise ValueError unless (crow, col) is a valid CSR structure of an [N, k] matrix.

    The validation of csr_pack (and of CSRLinear's loads): crow int32/int64 [N+1] with
    1 <= N < 2^31 (N = n when given), col int32/uint16 [nnz], 1 <= k < 2^31; then, on tensors with
    data, crow starts at 0, never decreases and ends at nnz, and every column lies in [0, k).
    `names` name crow and col in the messages.
    """
    crow_name, col_name = names
    check_devices(op, crow_name, crow, {col_name: col})
    shape = "[N+1] with 1 <= N < 2^31" if n is None else f"[N+1] = [{n + 1}]"
    ok = crow.dtype in (torch.int32, torch.int64) and crow.dim() == 1
    ok = ok and (crow.shape[0] >= 2 and crow.shape[0] <= pack_header.MAX_DIM if n is None else crow.shape[0] == n + 1)
    torch._check_value(ok, lambda: f"{op}: {crow_name} must be a 1-D int32/int64 tensor of shape {shape}, got "
                                   f"{crow.dtype} {tuple(crow.shape)}")
    torch._check_value(col.dtype in (torch.int32, torch.uint16) and col.dim() == 1,
                       lambda: f"{op}: {col_name} must be a 1-D int32 or uint16 tensor, got {col.dtype} "
                               f"{tuple(col.shape)}")
    torch._check_value(1 <= k < pack_header.MAX_DIM, lambda: f"{op}: in_features must be in [1, 2^31), got {k}")
    if is_fake(crow) or is_fake(col):
        return  # the rest reads the index (data): the kernel checks it when it runs
    nnz = col.shape[0]
    c = crow.to(torch.int64)
    if int(c[0]) != 0 or int(c[-1]) != nnz or bool((c[1:] < c[:-1]).any()):
        raise ValueError(f"{op}: {crow_name} must start at 0, never decrease and end at nnz = {nnz} (the length "
                         f"of {col_name})")
    cl = col.to(torch.int64)
    bad = (cl < 0) | (cl >= k)
    if bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: {col_name} values must lie in [0, in_features) = [0, {k}), got "
                         f"{col_name}[{j}] = {int(cl[j])}")


def pack(crow: torch.Tensor, col: torch.Tensor, k: int) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.csr_pack: the same bytes, on crow's device).

    Args:
        crow: int32/int64 [N+1].
        col: int32/uint16 [nnz], in [0, k).
        k: K (in_features).
    Returns:
        uint8 [N, ceil(packed_bytes(N, k, nnz) / N)] (layout in the module docstring).
    Raises:
        ValueError: an invalid argument; the message names it (check()).
    """
    check(crow, col, k, _PACK_OP)
    n, nnz = crow.shape[0] - 1, col.shape[0]
    cb = col_bytes(k)
    cl = col.to(torch.int64)
    col_end = int(cl.max()) + 1 if nnz else 0
    header = pack_header.make(TAG, VERSION, n, k, (nnz, cb, col_end), device=crow.device)
    rowptr = crow.to(torch.int64).contiguous().view(torch.uint8)
    cols = cl.to(torch.uint16 if cb == 2 else torch.int32).view(torch.uint8).to(crow.device)
    pad = torch.zeros((-cols.numel()) % 8, dtype=torch.uint8, device=crow.device)
    return pack_header.shaped(torch.cat([header, rowptr, cols, pad]), (n,))


def placeholder_pack(n: int, k: int, nnz: int = 0, device=None) -> torch.Tensor:
    """The pack of an [n, k] matrix whose nnz stored values all sit in column 0 of the last row,
    built without csr_pack (a module skeleton's placeholder; with zero values it is the zero weight).

    With nnz = 0 it is pack_header.zeros: zero layout bytes are the pack of the all-zero weight.
    """
    out = pack_header.zeros(TAG, VERSION, (n,), n, k, (nnz, col_bytes(k), 1 if nnz else 0),
                            packed_bytes(n, k, nnz), device=device)
    if nnz:  # rowptr[n] = nnz; the columns stay zero
        start = pack_header.HEADER_BYTES + 8 * n
        out.view(-1)[start:start + 8] = torch.tensor([nnz], dtype=torch.int64).view(torch.uint8).to(device)
    return out


def read_header(packed: torch.Tensor, op: str) -> Header:
    """The header of a CSR pack, after checking every field, the pack's shape and its row pointer
    (the module docstring says why these make every read of csr_linear stay in bounds).

    Raises:
        ValueError: not a valid pack; the message names `op` and "packed" (the same messages as csrc/cpu/csr_linear.cpp).
    """
    r = pack_header.Reader(op, "packed", _PACK_OP)
    h = pack_header.read(packed, TAG, VERSION, r)
    who = f"{op}: packed"
    nnz, _, col_end = h.fields
    if not 0 <= nnz < MAX_NNZ:
        raise ValueError(f"{who}'s header has nnz={nnz}; it must be in [0, 2^48)")
    if not (col_end == 0 if nnz == 0 else 1 <= col_end <= h.k):
        raise ValueError(f"{who}'s header has column end {col_end} for K={h.k} and nnz={nnz}; it must be in "
                         f"[1, K] (0 when nnz = 0)")
    cb = col_bytes(h.k)
    pack_header.check_layout(h, (nnz, cb, col_end), packed, (h.n,), packed_bytes(h.n, h.k, nnz), r)
    header = Header(h.n, h.k, nnz, cb, col_end)
    rowptr = index_views(packed, header)[0]
    # one condition, so one device-to-host sync on a GPU
    if not bool((rowptr[0] == 0) & (rowptr[-1] == nnz) & (rowptr[1:] >= rowptr[:-1]).all()):
        raise ValueError(f"{who}'s row pointer is corrupt (it must start at 0, never decrease and end at nnz = "
                         f"{nnz}); repack it with compressops.ops.{_PACK_OP}")
    return header


def check_columns(packed: torch.Tensor, h: Header, op: str) -> None:
    """Raise ValueError unless every column of a pack (whose header read_header returned) lies in
    [0, K): one min and max over them (16-bit columns cannot pass K = 65536: nothing to scan)."""
    if h.nnz == 0 or (h.col_bytes == 2 and h.k == 65536):
        return
    lo, hi = index_views(packed, h)[1].to(torch.int32).aminmax()
    if not bool((lo >= 0) & (hi < h.k)):  # one device-to-host sync on a GPU
        raise ValueError(f"{op}: packed holds a column outside [0, K) = [0, {h.k}) (its column bytes are corrupt); "
                         f"repack it with compressops.ops.{_PACK_OP}")


def index_views(packed: torch.Tensor, h: Header) -> tuple[torch.Tensor, torch.Tensor]:
    """Views into a pack whose header `h` read_header returned: rowptr int64 [N+1] and the columns,
    uint16 or int32 [nnz]. No copy."""
    flat = packed.view(-1)
    start = pack_header.HEADER_BYTES
    rowptr = flat[start:start + 8 * (h.n + 1)].view(torch.int64)
    start += 8 * (h.n + 1)
    cols = flat[start:start + h.col_bytes * h.nnz].view(torch.uint16 if h.col_bytes == 2 else torch.int32)
    return rowptr, cols


def unpack(packed: torch.Tensor, op: str = "csr_unpack") -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical (crow, col) of a pack (copies, on packed's device).

    Returns:
        crow int32/int64 [N+1], col uint16/int32 [nnz] (canonical dtypes).
    """
    h = read_header(packed, op)
    rowptr, cols = index_views(packed, h)
    return rowptr.to(crow_dtype(h.nnz), copy=True), cols.clone()


def to_dense(crow, col, values, k, dtype=torch.float32) -> torch.Tensor:
    """Dense [N, K] of a CSR structure (duplicates summed)."""
    n = crow.shape[0] - 1
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(n, device=crow.device), counts)
    dense = torch.zeros(n, k, dtype=dtype, device=values.device)
    dense.index_put_((rows, col.to(torch.int64)), values.to(dtype), accumulate=True)
    return dense


def dense_weight(op: str, packed: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The float32 dense weight [N, K] of a pack and its values (duplicates summed)."""
    h = read_header(packed, op)
    return to_dense(*index_views(packed, h), values, h.k, torch.float32)


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, values: torch.Tensor,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
    """The validation of csr_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K).
        packed: uint8 from csr_pack.
        values: float32/bfloat16 [nnz].
        bias: optional float [N].
        out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        (N, K, output dtype, header): header is read_header's, or None on fake tensors, whose
        header (data) cannot be read: N then comes from the pack's first dimension and K from x.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_x(x, op)
    check_devices(op, "x", x, {"packed": packed, "values": values, "bias": bias})
    if is_fake(packed):
        (n,) = pack_header.check_rows(packed, pack_header.Reader(op, "packed", _PACK_OP), 2)
        h, k, nnz = None, x.shape[-1], None
    else:
        h = read_header(packed, op)
        n, k, nnz = h.n, h.k, h.nnz
        check_k(x, k, op, "the pack has K")
    ok = values.dtype in VALUE_DTYPES and values.dim() == 1 and (nnz is None or values.shape[0] == nnz)
    shape = "[nnz]" if nnz is None else f"[nnz] = [{nnz}]"
    torch._check_value(ok, lambda: f"{op}: values must be float32 or bfloat16 of shape {shape}, got {values.dtype} "
                                   f"{tuple(values.shape)}")
    check_bias(bias, n, op)
    out_t = resolve_out_dtype(x, out_dtype, op)
    if h is not None:
        check_columns(packed, h, op)
    return n, k, out_t, h


def decode_v2_index(index: torch.Tensor, n: int, k: int, op: str, name: str = "index"):
    """(crow int64 [N+1], col uint16/int32 [nnz]) of an `index` that CSRLinear's state_dict version 2
    held (compressops 0.1), checked against the layer's [n, k]; the caller validates the values.

    That index, 1-D uint8, little endian: a 64-byte header (int32 magic 0x52534343, version 1, N, K,
    col_bytes, a sorted flag, 2 reserved; int64 nnz, 3 reserved), then int64 rowptr [N+1], then the
    columns in col_bytes (2 when K <= 65536, else 4) each, zero padded to a multiple of 8 bytes.

    Raises:
        ValueError: an invalid index; the message names `op` and `name`.
    """
    hb = pack_header.HEADER_BYTES
    if index.dtype != torch.uint8 or index.dim() != 1 or index.numel() < hb:
        raise ValueError(f"{op}: {name} must be a 1-D uint8 CSR index (state_dict version 2), got {index.dtype} "
                         f"{tuple(index.shape)}")
    raw = index.detach().cpu()
    h = raw[:32].clone().view(torch.int32).tolist()
    nnz = int(raw[32:40].clone().view(torch.int64)[0])
    if h[0] != 0x52534343 or h[1] != 1:
        raise ValueError(f"{op}: {name} is not a CSR index of state_dict version 2")
    if (h[2], h[3]) != (n, k):
        raise ValueError(f"{op}: {name} is for a [{h[2]}, {h[3]}] weight, the layer is [{n}, {k}]")
    cb = col_bytes(k)
    want = hb + 8 * (n + 1) + (cb * nnz + 7) // 8 * 8 if 0 <= nnz < MAX_NNZ else -1
    if h[4] != cb or raw.numel() != want:
        raise ValueError(f"{op}: {name} holds {raw.numel()} bytes and col_bytes={h[4]}, which its header "
                         f"(nnz={nnz}) contradicts")
    crow = raw[hb:hb + 8 * (n + 1)].clone().view(torch.int64)
    start = hb + 8 * (n + 1)
    col = raw[start:start + cb * nnz].clone().view(torch.uint16 if cb == 2 else torch.int32)
    return crow, col
