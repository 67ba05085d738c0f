"""The PQ (weight product quantization) linear format.

A weight W [N, K] is split along K into S = ceil(K / d) subvectors of d values. When K is not a
multiple of d, W (and every input x) is padded with zeros to S * d columns: the padded columns
multiply zeros, so they never change y (their codebook entries are fitted to zeros too).
Subspace s has its own codebook of k centroids; each subvector is stored as the index of one.

Canonical (what state_dict and files hold):
    codebooks  float32 [S, k, d]        C[s, c] = centroid c of subspace s
    codes      k=256: uint8 [N, S]      codes[n, s] in [0, 256)
               k=16:  uint8 [N, ceil(S/2)]  two 4-bit codes a byte, low nibble = even s
                                            (an odd S leaves the last high nibble 0)
    W_hat[n, s*d:(s+1)*d] = C[s, code(n, s)]

Inference (asymmetric distance computation): for each input row x, the table
L[s, c] = x[s*d:(s+1)*d] . C[s, c]; then y[n] = sum_s L[s, code(n, s)] + bias[n].

Prepacked (CPU kernels; built from the canonical buffers, never serialized), 1-D uint8:
    header     64 bytes: int32 magic, version, N, K, S, d, k, N_pad, S_pad, 7 reserved
    codebooks  float32 [S_pad][d][k]: transposed so a table build reads k centroids' j-th
               component contiguously; subspaces s >= S are zero
    codes      k=16:  uint8 [N_pad/32][S_pad/2][32], N_pad = roundup(N, 32), S_pad = roundup(S, 2):
                      byte j of pair p is code(n, 2p) | code(n, 2p+1) << 4 for n = 32*block + j,
                      i.e. one 32-byte load feeds one vpshufb per subspace for 32 output rows
               k=256: uint8 [ceil(S/16)][N_pad/8][sc][8], N_pad = roundup(N, 8), S_pad = S,
                      sc = min(16, S - 16 * chunk): chunks of 16 subspaces (the kernels build
                      the tables one chunk at a time into a small scratch slice); inside a chunk,
                      8 output rows' codes for one subspace side by side, blocks contiguous
    Padded rows and subspaces hold code 0.
csrc/common/pq_layout.h defines the same layout for C++; tests check both packers agree.
"""

from __future__ import annotations

import math

import torch

from .checks import check_bias, check_k, check_packed, check_x, is_fake, resolve_out_dtype

MAGIC = 0x51504350  # "PCPQ"
VERSION = 1
HEADER_BYTES = 64
NUM_CENTROIDS = (16, 256)
SUBVECTOR_DIMS = (1, 2, 4, 8, 16)
BLOCK_ROWS = {16: 32, 256: 8}
CHUNK = 16  # k=256: subspaces per code chunk


def _round_up(v, m):
    return (v + m - 1) // m * m


def num_subspaces(in_features: int, d: int) -> int:
    return (in_features + d - 1) // d


def padded_dims(n: int, s: int, k: int) -> tuple[int, int]:
    """(N_pad, S_pad) of the prepacked layout."""
    return _round_up(n, 32 if k == 16 else 8), (_round_up(s, 2) if k == 16 else s)


def packed_bytes(n: int, in_features: int, d: int, k: int) -> int:
    """Size in bytes of the prepacked buffer (works on SymInts)."""
    s = num_subspaces(in_features, d)
    n_pad, s_pad = padded_dims(n, s, k)
    code_bytes = n_pad * s_pad // 2 if k == 16 else n_pad * s_pad
    return HEADER_BYTES + 4 * s_pad * d * k + code_bytes


def codes_shape(n: int, s: int, k: int) -> tuple[int, int]:
    """Shape of the canonical codes buffer."""
    return (n, (s + 1) // 2) if k == 16 else (n, s)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8/int [N, S] codes in [0, 16) -> uint8 [N, ceil(S/2)], low nibble = even s."""
    n, s = codes.shape
    c = codes.to(torch.uint8)
    if s % 2:
        c = torch.cat([c, c.new_zeros(n, 1)], dim=1)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of pack_nibbles: uint8 [N, ceil(S/2)] -> uint8 [N, S]."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack([lo, hi], dim=2).reshape(packed.shape[0], -1)[:, :s]


def unpacked_codes(codes: torch.Tensor, s: int, k: int) -> torch.Tensor:
    """Canonical codes -> uint8 [N, S] (one code per byte)."""
    return unpack_nibbles(codes, s) if k == 16 else codes


def check_canonical(codes: torch.Tensor, codebooks: torch.Tensor, op: str) -> tuple[int, int, int, int]:
    """Validate canonical buffers; returns (N, S, k, d)."""
    if codebooks.dtype != torch.float32 or codebooks.dim() != 3:
        raise ValueError(f"{op}: codebooks must be float32 [S, k, d], got {codebooks.dtype} {tuple(codebooks.shape)}")
    s, k, d = codebooks.shape
    if k not in NUM_CENTROIDS:
        raise ValueError(f"{op}: codebooks must have k in {NUM_CENTROIDS} centroids (dim 1), got {k}")
    if d not in SUBVECTOR_DIMS or s < 1:
        raise ValueError(f"{op}: codebooks need S >= 1 and d in {SUBVECTOR_DIMS}, got S={s}, d={d}")
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"{op}: codes must be uint8 [N, {'ceil(S/2)' if k == 16 else 'S'}], got "
                         f"{codes.dtype} {tuple(codes.shape)}")
    n = codes.shape[0]
    if tuple(codes.shape) != codes_shape(n, s, k):
        raise ValueError(f"{op}: codes must have shape {codes_shape(n, s, k)} for S={s}, k={k}, got "
                         f"{tuple(codes.shape)}")
    if n < 1:
        raise ValueError(f"{op}: codes need N >= 1 rows")
    return n, s, k, d


def pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """Pure-PyTorch packer (the reference for compressops.ops.pq_pack)."""
    n, s, k, d = check_pack(codes, codebooks, in_features, "pq_pack")
    n_pad, s_pad = padded_dims(n, s, k)
    dev = codes.device
    cb = torch.zeros(s_pad, d, k, dtype=torch.float32, device=dev)
    cb[:s] = codebooks.transpose(1, 2)
    full = torch.zeros(n_pad, s_pad, dtype=torch.uint8, device=dev)
    full[:n, :s] = unpacked_codes(codes, s, k)
    if k == 16:
        pairs = full[:, 0::2] | (full[:, 1::2] << 4)  # [N_pad, S_pad/2]
        body = pairs.view(n_pad // 32, 32, s_pad // 2).permute(0, 2, 1).contiguous()
    else:
        body = torch.cat([full[:, s0:s0 + CHUNK].reshape(n_pad // 8, 8, -1).permute(0, 2, 1).reshape(-1)
                          for s0 in range(0, s_pad, CHUNK)])
    header = torch.zeros(16, dtype=torch.int32, device=dev)
    header[:9] = torch.tensor([MAGIC, VERSION, n, in_features, s, d, k, n_pad, s_pad], dtype=torch.int32)
    return torch.cat([header.view(torch.uint8), cb.reshape(-1).view(torch.uint8), body.reshape(-1)])


def read_header(packed: torch.Tensor, op: str) -> dict:
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() < HEADER_BYTES:
        raise ValueError(f"{op}: packed must be a 1-D uint8 tensor from compressops.ops.pq_pack, got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    h = packed[:HEADER_BYTES].cpu().contiguous().view(torch.int32).tolist()
    if h[0] != MAGIC or h[1] != VERSION:
        raise ValueError(f"{op}: packed does not hold a PQ pack (version {VERSION}); repack it with "
                         f"compressops.ops.pq_pack")
    keys = ("n", "k_in", "s", "d", "k", "n_pad", "s_pad")
    out = dict(zip(keys, h[2:9]))
    need = packed_bytes(out["n"], out["k_in"], out["d"], out["k"])
    if packed.numel() != need:
        raise ValueError(f"{op}: packed has {packed.numel()} bytes but its header needs {need}")
    return out


def unpack(packed: torch.Tensor, op: str = "pq_unpack") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prepacked buffer -> (codes uint8 [N, S] one per byte, codebooks float32 [S, k, d], in_features)."""
    h = read_header(packed, op)
    n, s, d, k, n_pad, s_pad = h["n"], h["s"], h["d"], h["k"], h["n_pad"], h["s_pad"]
    cb_bytes = 4 * s_pad * d * k
    cb = packed[HEADER_BYTES:HEADER_BYTES + cb_bytes].clone().view(torch.float32).view(s_pad, d, k)
    codebooks = cb[:s].transpose(1, 2).contiguous()
    body = packed[HEADER_BYTES + cb_bytes:]
    if k == 16:
        pairs = body.view(n_pad // 32, s_pad // 2, 32).permute(0, 2, 1).reshape(n_pad, s_pad // 2)
        full = torch.stack([pairs & 0x0F, pairs >> 4], dim=2).reshape(n_pad, s_pad)
    else:
        parts, off = [], 0
        for s0 in range(0, s_pad, CHUNK):
            sc = min(CHUNK, s_pad - s0)
            parts.append(body[off:off + n_pad * sc].view(n_pad // 8, sc, 8).permute(0, 2, 1).reshape(n_pad, sc))
            off += n_pad * sc
        full = torch.cat(parts, dim=1)
    return full[:n, :s].contiguous(), codebooks, h["k_in"]


def dequantize(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """Canonical buffers -> the float32 weight W_hat [N, in_features]."""
    n, s, k, d = check_canonical(codes, codebooks, "pq dequantize")
    c = unpacked_codes(codes, s, k).long()  # [N, S]
    w = codebooks[torch.arange(s, device=c.device)[None, :], c]  # [N, S, d]
    return w.reshape(n, s * d)[:, :in_features].contiguous()


def bits_per_weight(num_centroids: int, d: int) -> float:
    return math.log2(num_centroids) / d


def check_pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int, op: str = "pq_pack"):
    """The validation of pq_pack: canonical buffers (check_canonical) for an in_features-wide layer.

    Reads no data, so it runs in full on fake tensors. Returns (N, S, k, d).
    """
    n, s, k, d = check_canonical(codes, codebooks, op)
    need = num_subspaces(in_features, d)
    torch._check_value(need == s, lambda: f"{op}: in_features={in_features} needs S=ceil(K/d)={need} subspaces "
                                          f"but codebooks have S={s}")
    return n, s, k, d


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, in_features: int, out_features: int,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None):
    """The validation of pq_linear (reference, fake and Triton kernels).

    Returns:
        (N, K, output dtype, header): header is read_header's dict, or None on fake tensors,
        whose header (data) cannot be read: N and K are then out_features and in_features, and
        the kernel checks the header when it runs on real tensors.
    Raises:
        ValueError naming the argument.
    """
    check_x(x, op)
    if is_fake(packed):
        check_packed(packed, op, "packed", "pq_pack", HEADER_BYTES)
        h, n, k_in = None, out_features, in_features
    else:
        h = read_header(packed, op)
        n, k_in = h["n"], h["k_in"]
    torch._check_value(k_in == in_features and n == out_features,
                       lambda: f"{op}: packed holds a [{n}, {k_in}] layer but in_features={in_features}, "
                               f"out_features={out_features}")
    check_k(x, in_features, op, "the layer has K")
    check_bias(bias, n, op)
    return n, k_in, resolve_out_dtype(x, out_dtype, op), h
