"""The CSR (compressed sparse row) linear format (DESIGN.md section 4).

Canonical (what compressops.ops.csr_pack takes, and what CSRLinear.crow / .col return):
    crow    int32 or int64 [N+1]  crow[0] = 0, non-decreasing, crow[N] = nnz
    col     int32 [nnz]           column of each stored value, in [0, K); any order within a row
                                  (duplicates are summed)
    values  float32 or bfloat16 [nnz]

Index (built by compressops.ops.csr_pack, read by the kernels, and what CSRLinear stores in its
state_dict as `index`, so columns are held once and as narrow as K allows), 1-D uint8, little endian:
    header  64 bytes: int32 magic, version, N, K, col_bytes (2 when K <= 65536, else 4), sorted (1 when
            the columns of every row are non-decreasing: the kernel then tiles K), 2 reserved,
            int64 nnz, 3 int64 reserved
    rowptr  int64 [N+1]
    cols    uint16 or int32 [nnz], padded to a multiple of 8 bytes
The pack validates crow and col once; csr_linear trusts the index (its header is checked), so
CSRLinear re-validates an index it loads from a file.
"""

from __future__ import annotations

import torch

from .checks import check_bias, check_k, check_packed, check_x, is_fake, resolve_out_dtype

MAGIC = 0x52534343  # "CCSR"
VERSION = 1
HEADER_BYTES = 64


def col_bytes(k: int) -> int:
    return 2 if k <= 65536 else 4


def packed_bytes(n: int, k: int, nnz: int) -> int:
    cb = col_bytes(k)
    return HEADER_BYTES + 8 * (n + 1) + (cb * nnz + 7) // 8 * 8


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
    """Float weight [N, K] (and optional keep-mask) -> (crow int64 [N+1], col int32 [nnz], values).

    values keep weight's dtype when float32/bfloat16 (otherwise float32). Without a mask the
    nonzeros are kept.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach()
    if not torch.isfinite(w).all():
        raise ValueError(f"{name}: weight holds NaN/Inf values")
    dtype = w.dtype if w.dtype in (torch.float32, torch.bfloat16) else torch.float32
    keep = (w != 0) if mask is None else (mask.to(torch.bool) & (w != 0))
    rows, cols = keep.nonzero(as_tuple=True)
    counts = keep.sum(dim=1)
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
    crow[1:] = counts.cumsum(0)
    return crow, cols.to(torch.int32).contiguous(), w[rows, cols].to(dtype).contiguous()


def check(crow: torch.Tensor, col: torch.Tensor, n: int, k: int, op: str = "csr") -> None:
    """Raise ValueError unless (crow, col) is a valid CSR index for an [n, k] matrix."""
    if crow.dtype not in (torch.int32, torch.int64) or crow.dim() != 1 or crow.shape[0] != n + 1:
        raise ValueError(f"{op}: crow must be int32/int64 of shape [N+1] = [{n + 1}], got {crow.dtype} "
                         f"{tuple(crow.shape)}")
    if col.dtype != torch.int32 or col.dim() != 1:
        raise ValueError(f"{op}: col must be a 1-D int32 tensor, got {col.dtype} {tuple(col.shape)}")
    if is_fake(crow) or is_fake(col):
        return  # the rest reads the index (data): the kernel checks it when it runs
    c = crow.to(torch.int64)
    if int(c[0]) != 0 or int(c[-1]) != col.shape[0] or bool((c[1:] < c[:-1]).any()):
        raise ValueError(f"{op}: crow must start at 0, be non-decreasing and end at nnz = {col.shape[0]}")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= k):
        raise ValueError(f"{op}: col values must lie in [0, in_features) = [0, {k})")


def pack(crow: torch.Tensor, col: torch.Tensor, k: int) -> torch.Tensor:
    """Python twin of compressops.ops.csr_pack (same bytes, on crow's device)."""
    n = crow.shape[0] - 1
    check(crow, col, n, k, "csr_pack")
    nnz = col.shape[0]
    cb = col_bytes(k)
    out = torch.zeros(packed_bytes(n, k, nnz), dtype=torch.uint8)
    c64 = crow.to(torch.int64).cpu()
    counts = c64[1:] - c64[:-1]
    row_of = torch.repeat_interleave(torch.arange(n), counts)
    cl = col.cpu().to(torch.int64)
    same_row = row_of[1:] == row_of[:-1]
    is_sorted = int(not bool(((cl[1:] < cl[:-1]) & same_row).any())) if nnz > 1 else 1
    hdr = torch.tensor([MAGIC, VERSION, n, k, cb, is_sorted, 0, 0], dtype=torch.int32)
    out[:32] = hdr.view(torch.uint8)
    out[32:40] = torch.tensor([nnz], dtype=torch.int64).view(torch.uint8)
    off = HEADER_BYTES
    out[off:off + 8 * (n + 1)] = crow.to(torch.int64).cpu().view(torch.uint8)
    off += 8 * (n + 1)
    cols = col.cpu().to(torch.int32)
    cols = cols.to(torch.int16) if cb == 2 else cols  # wraps 32768..65535 to the same 16 bits
    if nnz:
        out[off:off + cb * nnz] = cols.view(torch.uint8)
    return out.to(crow.device)


def read_header(packed: torch.Tensor, op: str) -> dict:
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() < HEADER_BYTES:
        raise ValueError(f"{op}: packed must be a 1-D uint8 tensor from compressops.ops.csr_pack")
    h = packed[:32].cpu().view(torch.int32).tolist()
    nnz = int(packed[32:40].cpu().view(torch.int64)[0])
    if h[0] != MAGIC or h[1] != VERSION:
        raise ValueError(f"{op}: packed does not hold a CSR pack (version {VERSION}); rebuild it with csr_pack")
    n, k = h[2], h[3]
    if packed.numel() != packed_bytes(n, k, nnz):
        raise ValueError(f"{op}: packed has {packed.numel()} bytes but its header needs {packed_bytes(n, k, nnz)}")
    return {"n": n, "k": k, "nnz": nnz, "col_bytes": h[4], "sorted": h[5]}


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(crow int64 [N+1], col int32 [nnz], K) from a pack."""
    h = read_header(packed, "csr_unpack")
    n, k, nnz, cb = h["n"], h["k"], h["nnz"], h["col_bytes"]
    p = packed.cpu()
    off = HEADER_BYTES
    crow = p[off:off + 8 * (n + 1)].clone().view(torch.int64)
    off += 8 * (n + 1)
    raw = p[off:off + cb * nnz].clone()
    col = raw.view(torch.int16).to(torch.int32) & 0xFFFF if cb == 2 else raw.view(torch.int32)
    return crow.to(packed.device), col.to(torch.int32).to(packed.device), k


def to_dense(crow, col, values, k, dtype=torch.float32) -> torch.Tensor:
    """Dense [N, K] (duplicates summed)."""
    n = crow.shape[0] - 1
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(n, device=crow.device), counts)
    dense = torch.zeros(n, k, dtype=dtype, device=values.device)
    dense.index_put_((rows, col.to(torch.int64)), values.to(dtype), accumulate=True)
    return dense


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, values: torch.Tensor, out_features: int,
                 bias: torch.Tensor | None = None):
    """The validation of csr_linear (reference, fake and Triton kernels).

    Returns:
        (N, K, output dtype = x.dtype, header): header is read_header's dict, or None on fake
        tensors, whose header (data) cannot be read: N is then out_features, K is x's and nnz
        values' length, and the kernel checks the header when it runs on real tensors.
    Raises:
        ValueError naming the argument.
    """
    check_x(x, op)
    if is_fake(packed):
        check_packed(packed, op, "packed", "csr_pack", HEADER_BYTES)
        h, n, k, nnz = None, int(out_features), x.shape[-1], values.shape[0] if values.dim() == 1 else None
    else:
        h = read_header(packed, op)
        n, k, nnz = h["n"], h["k"], h["nnz"]
    torch._check_value(int(out_features) == n, lambda: f"{op}: out_features={out_features} but the pack has N={n}")
    torch._check_value(values.dtype in (torch.float32, torch.bfloat16) and values.dim() == 1 and values.shape[0] == nnz,
                       lambda: f"{op}: values must be float32/bfloat16 of shape [nnz] = [{nnz}], got {values.dtype} "
                               f"{tuple(values.shape)}")
    check_k(x, k, op, "the pack has K")
    check_bias(bias, n, op)
    return n, k, resolve_out_dtype(x, None, op), h
