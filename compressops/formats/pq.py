"""The PQ (weight product quantization) linear format.

A weight W [N, K] is split along K into S = ceil(K / d) subvectors of d values. When K is not a
multiple of d, W (and every input x) is padded with zeros to S * d columns: the padded columns
multiply zeros, so they never change y (their codebook entries are fitted to zeros too).
Subspace s has its own codebook of k centroids; each subvector is stored as the index of one.

Canonical, version 1 (what state_dict and files hold; the same on every device):

    codebooks  float32 [S, k, d]        C[s, c] = centroid c of subspace s; k in (16, 256),
                                        d in (1, 2, 4, 8, 16)
    codes      k=256: uint8 [N, S]      codes[n, s] in [0, 256)
               k=16:  uint8 [N, ceil(S/2)]  two 4-bit codes a byte, low nibble = even s
                                            (an odd S leaves the last high nibble 0)
    W_hat[n, s*d:(s+1)*d] = C[s, code(n, s)]
A code is a nibble (k=16) or a byte (k=256), so every code is below k by construction: no code can
index past its codebook, and pq_pack has nothing to check in the codes' values.

Inference (asymmetric distance computation): for each input row x, the table
L[s, c] = x[s*d:(s+1)*d] . C[s, c]; then y[n] = sum_s L[s, code(n, s)] + bias[n].

Packed, version 1 (compressops.ops.pq_pack; built from the canonical tensors, never saved):

    header     64 bytes, the shared pack header (compressops/formats/pack_header.py): tag "pq",
               version 1, N, K, family fields (d, k, S)
    codebooks  float32 [S_pad][d][k]: transposed so a table build reads k centroids' j-th
               component contiguously; subspaces s >= S are zero
    codes      k=16:  uint8 [N_pad/32][S_pad/2][32], N_pad = roundup(N, 32), S_pad = roundup(S, 2):
                      byte j of pair p is code(n, 2p) | code(n, 2p+1) << 4 for n = 32*block + j,
                      i.e. one 32-byte load feeds one vpshufb per subspace for 32 output rows; the
                      pair bytes are the canonical bytes unchanged
               k=256: uint8 [ceil(S/16)][N_pad/8][sc][8], N_pad = roundup(N, 8), S_pad = S,
                      sc = min(16, S - 16 * chunk): chunks of 16 subspaces (the kernels build
                      the tables one chunk at a time into a small scratch slice); inside a chunk,
                      8 output rows' codes for one subspace side by side, blocks contiguous
    shape      uint8 [N, ceil(packed_bytes / N)] (pack_header.pack_shape), zero padded at the end
Padded rows and subspaces hold code 0. The pack is lossless: unpack gives back the canonical
tensors bit for bit (the codebooks are a transposed view into it). All-zero layout bytes are the
pack of all-zero codes and codebooks, so a module skeleton holds zero_pack instead of packing zeros.
The pack's first dimension is N, which is how the fake kernel (it cannot read the header) knows the
output shape. csrc/common/pq_layout.h defines the same layout for C++; tests check both packers agree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import pack_header
from .checks import check_bias, check_devices, check_k, check_x, is_fake, resolve_out_dtype

TAG = "pq"
VERSION = 1  # the packed layout's
NUM_CENTROIDS = (16, 256)
SUBVECTOR_DIMS = (1, 2, 4, 8, 16)
CHUNK = 16  # k=256: subspaces per code chunk
_PACK_OP = "pq_pack"


class Layout(NamedTuple):
    """What a pack's header implies: N, K, d, k, S and the padded N_pad, S_pad."""

    n: int
    k_in: int
    d: int
    k: int
    s: int
    n_pad: int
    s_pad: int

    @property
    def codebook_bytes(self) -> int:
        return 4 * self.s_pad * self.d * self.k


def _round_up(v, m):
    return (v + m - 1) // m * m


def num_subspaces(in_features: int, d: int) -> int:
    return (in_features + d - 1) // d


def padded_dims(n: int, s: int, k: int) -> tuple[int, int]:
    """(N_pad, S_pad) of the prepacked layout: N in blocks of 32 rows (k=16) or 8 (k=256)."""
    return _round_up(n, 32 if k == 16 else 8), (_round_up(s, 2) if k == 16 else s)


def packed_bytes(n, in_features, d: int, k: int):
    """Bytes of the pack (header included) before row padding (works on SymInts)."""
    s = num_subspaces(in_features, d)
    n_pad, s_pad = padded_dims(n, s, k)
    code_bytes = n_pad * s_pad // 2 if k == 16 else n_pad * s_pad
    return pack_header.HEADER_BYTES + 4 * s_pad * d * k + code_bytes


def header_fields(in_features: int, d: int, k: int) -> tuple[int, int, int]:
    """The family fields of a pack's header: (subvector_dim, num_centroids, num_subspaces)."""
    return d, k, num_subspaces(in_features, d)


def zero_pack(n: int, in_features: int, d: int, k: int, device=None) -> torch.Tensor:
    """The pack of all-zero codes and codebooks for an [n, in_features] layer, built without a pack op."""
    return pack_header.zeros(TAG, VERSION, (n,), n, in_features, header_fields(in_features, d, k),
                             packed_bytes(n, in_features, d, k), device=device)


def codes_shape(n: int, s: int, k: int) -> tuple[int, int]:
    """Shape of the canonical codes tensor."""
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
    """Raise ValueError unless codes and codebooks are canonical PQ tensors (the module docstring);
    returns (N, S, k, d). Reads no data, so it runs in full on fake tensors."""
    torch._check_value(codebooks.dtype == torch.float32 and codebooks.dim() == 3,
                       lambda: f"{op}: codebooks must be float32 [S, k, d], got {codebooks.dtype} "
                               f"{tuple(codebooks.shape)}")
    s, k, d = codebooks.shape
    torch._check_value(k in NUM_CENTROIDS,
                       lambda: f"{op}: codebooks must have k in {NUM_CENTROIDS} centroids (dim 1), got {k}")
    torch._check_value(d in SUBVECTOR_DIMS and s >= 1,
                       lambda: f"{op}: codebooks need S >= 1 and d in {SUBVECTOR_DIMS}, got S={s}, d={d}")
    torch._check_value(codes.dtype == torch.uint8 and codes.dim() == 2,
                       lambda: f"{op}: codes must be uint8 [N, {'ceil(S/2)' if k == 16 else 'S'}], got "
                               f"{codes.dtype} {tuple(codes.shape)}")
    n = codes.shape[0]
    want = codes_shape(n, s, k)
    torch._check_value(codes.shape[1] == want[1],
                       lambda: f"{op}: codes must have shape {want} for S={s}, k={k}, got {tuple(codes.shape)}")
    torch._check_value(1 <= n < pack_header.MAX_DIM, lambda: f"{op}: codes need 1 <= N < 2^31 rows, got N={n}")
    return n, s, k, d


def check_pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int, op: str = _PACK_OP):
    """The validation of pq_pack: canonical tensors (check_canonical) of an in_features-wide layer.

    Reads no data, so it runs in full on fake tensors. Returns (N, S, k, d).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_devices(op, "codes", codes, {"codebooks": codebooks})
    n, s, k, d = check_canonical(codes, codebooks, op)
    torch._check_value(1 <= in_features < pack_header.MAX_DIM,
                       lambda: f"{op}: in_features must be in [1, 2^31), got {in_features}")
    need = num_subspaces(in_features, d)
    torch._check_value(need == s, lambda: f"{op}: in_features={in_features} needs S=ceil(K/d)={need} subspaces "
                                          f"but codebooks have S={s}")
    return n, s, k, d


def pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """Pure-PyTorch packer (the reference of compressops.ops.pq_pack).

    Args:
        codes: the canonical codes (module docstring).
        codebooks: the canonical codebooks (module docstring).
        in_features: K.
    Returns:
        uint8 [N, ceil(packed_bytes / N)]: the header, then the packed layout, zero padded.
    """
    n, s, k, d = check_pack(codes, codebooks, in_features)
    n_pad, s_pad = padded_dims(n, s, k)
    dev = codes.device
    cb = torch.zeros(s_pad, d, k, dtype=torch.float32, device=dev)
    cb[:s] = codebooks.transpose(1, 2)
    if k == 16:  # the canonical pair bytes, moved unchanged
        pairs = torch.zeros(n_pad, s_pad // 2, dtype=torch.uint8, device=dev)
        pairs[:n] = codes
        body = pairs.view(n_pad // 32, 32, s_pad // 2).permute(0, 2, 1)
    else:
        full = torch.zeros(n_pad, s_pad, dtype=torch.uint8, device=dev)
        full[:n] = codes
        body = torch.cat([full[:, s0:s0 + CHUNK].reshape(n_pad // 8, 8, -1).permute(0, 2, 1).reshape(-1)
                          for s0 in range(0, s_pad, CHUNK)])
    header = pack_header.make(TAG, VERSION, n, in_features, header_fields(in_features, d, k), device=dev)
    flat = torch.cat([header, cb.reshape(-1).view(torch.uint8), body.reshape(-1)])
    return pack_header.shaped(flat, (n,))


def read_header(packed: torch.Tensor, op: str) -> Layout:
    """The layout of a PQ pack, after checking every header field and the size (the C++ host's
    read_layout, with its messages).

    Raises:
        ValueError: not a valid pack; the message names `op` and "packed".
    """
    r = pack_header.Reader(op, "packed", _PACK_OP)
    h = pack_header.read(packed, TAG, VERSION, r)
    d, k = h.fields[0], h.fields[1]
    if d not in SUBVECTOR_DIMS or k not in NUM_CENTROIDS:
        raise ValueError(f"{op}: packed's header has subvector_dim={d}, num_centroids={k}; a '{TAG}' pack needs "
                         f"subvector_dim in {SUBVECTOR_DIMS} and num_centroids in {NUM_CENTROIDS}; repack it "
                         f"with compressops.ops.{_PACK_OP}")
    pack_header.check_layout(h, header_fields(h.k, d, k), packed, (h.n,), packed_bytes(h.n, h.k, d, k), r)
    s = num_subspaces(h.k, d)
    return Layout(h.n, h.k, d, k, s, *padded_dims(h.n, s, k))


def layout_views(packed: torch.Tensor, h: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Views into a pack `h` = read_header(packed) checked: the transposed codebooks float32
    [S_pad, d, k] and the flat code bytes of the layout (module docstring)."""
    flat = packed.view(-1)
    start = pack_header.HEADER_BYTES
    cb = flat[start:start + h.codebook_bytes].view(torch.float32).view(h.s_pad, h.d, h.k)
    code_bytes = h.n_pad * h.s_pad // 2 if h.k == 16 else h.n_pad * h.s_pad
    return cb, flat[start + h.codebook_bytes:start + h.codebook_bytes + code_bytes]


def unpack_codebooks(packed: torch.Tensor, op: str = "pq_unpack") -> torch.Tensor:
    """The canonical codebooks float32 [S, k, d] of a pack: a (transposed, non-contiguous) view into
    it, no copy; writes to it change the pack."""
    h = read_header(packed, op)
    return layout_views(packed, h)[0][:h.s].transpose(1, 2)


def unpack_codes(packed: torch.Tensor, op: str = "pq_unpack") -> torch.Tensor:
    """The canonical codes of a pack (uint8 [N, S], or [N, ceil(S/2)] two a byte for k=16), exactly
    the bytes pq_pack was given: a new contiguous tensor, sharing no memory with the pack."""
    h = read_header(packed, op)
    body = layout_views(packed, h)[1]
    if h.k == 16:
        pairs = body.view(h.n_pad // 32, h.s_pad // 2, 32).permute(0, 2, 1).reshape(h.n_pad, h.s_pad // 2)
        return pairs[:h.n].clone(memory_format=torch.contiguous_format)
    parts, off = [], 0
    for s0 in range(0, h.s_pad, CHUNK):
        sc = min(CHUNK, h.s_pad - s0)
        rows = body[off:off + h.n_pad * sc].view(h.n_pad // 8, sc, 8).permute(0, 2, 1).reshape(h.n_pad, sc)
        parts.append(rows[:h.n])
        off += h.n_pad * sc
    return torch.cat(parts, dim=1)


def unpack(packed: torch.Tensor, op: str = "pq_unpack") -> tuple[torch.Tensor, torch.Tensor, int]:
    """A pack -> (canonical codes, codebooks float32 [S, k, d], in_features): exactly what pq_pack
    was given, in new contiguous tensors."""
    codebooks = unpack_codebooks(packed, op).clone(memory_format=torch.contiguous_format)
    return unpack_codes(packed, op), codebooks, read_header(packed, op).k_in


def dequantize(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """Canonical buffers -> the float32 weight W_hat [N, in_features]."""
    n, s, k, d = check_canonical(codes, codebooks, "pq dequantize")
    c = unpacked_codes(codes, s, k).long()  # [N, S]
    w = codebooks[torch.arange(s, device=c.device)[None, :], c]  # [N, S, d]
    return w.reshape(n, s * d)[:, :in_features].contiguous()


def dense_weight(op: str, packed: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, in_features] of a pack: codebooks[s, code(n, s)] side by side."""
    return dequantize(unpack_codes(packed, op), unpack_codebooks(packed, op), read_header(packed, op).k_in)


def bits_per_weight(num_centroids: int, d: int) -> float:
    return math.log2(num_centroids) / d


def check_linear(op: str, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None):
    """The validation of pq_linear (reference, fake and Triton kernels).

    Args:
        op: the op name the messages start with.
        x: float (..., K).
        packed: uint8 from pq_pack.
        bias: optional float [N].
        out_dtype: float32/bfloat16/float16 or None (x.dtype).
    Returns:
        (N, K, output dtype, layout): layout is read_header's Layout, or None on fake tensors, whose
        header (data) cannot be read: N is then the pack's first dimension and K is x's last, and
        the kernel checks the header when it runs on real tensors.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_x(x, op)
    check_devices(op, "x", x, {"packed": packed, "bias": bias})
    if is_fake(packed):
        (n,) = pack_header.check_rows(packed, pack_header.Reader(op, "packed", _PACK_OP), 2)
        h, k_in = None, x.shape[-1]
    else:
        h = read_header(packed, op)
        n, k_in = h.n, h.k_in
        check_k(x, k_in, op, "the weight has K")
    check_bias(bias, n, op)
    return n, k_in, resolve_out_dtype(x, out_dtype, op), h


def check_kmeans_assign(x_planar: torch.Tensor, centroids: torch.Tensor, op: str = "kmeans_assign"):
    """The validation of kmeans_assign: float32 points x_planar [S, d, N] and centroids [S, k, d] on one
    device, d >= 1, 1 <= k < 2^31, neither requiring grad (the op has no gradient).

    Reads no data, so it runs in full on fake tensors. Returns (S, d, N, k).
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    check_devices(op, "x_planar", x_planar, {"centroids": centroids})
    torch._check_value(x_planar.dtype == torch.float32 and x_planar.dim() == 3,
                       lambda: f"{op}: x_planar must be float32 [S, d, N], got {x_planar.dtype} {tuple(x_planar.shape)}")
    torch._check_value(centroids.dtype == torch.float32 and centroids.dim() == 3,
                       lambda: f"{op}: centroids must be float32 [S, k, d], got {centroids.dtype} "
                               f"{tuple(centroids.shape)}")
    s, d, n = x_planar.shape
    k = centroids.shape[1]
    torch._check_value(centroids.shape[0] == s and centroids.shape[2] == d,
                       lambda: f"{op}: centroids must be [S, k, d] = [{s}, k, {d}] to match x_planar "
                               f"{tuple(x_planar.shape)}, got {tuple(centroids.shape)}")
    torch._check_value(d >= 1 and k >= 1, lambda: f"{op}: need d >= 1 and k >= 1 centroids, got x_planar "
                                                   f"{tuple(x_planar.shape)} and centroids {tuple(centroids.shape)}")
    torch._check_value(k <= 2**31 - 1, lambda: f"{op}: at most 2^31 - 1 centroids, got k={k}")
    torch._check_value(not ((x_planar.requires_grad or centroids.requires_grad) and torch.is_grad_enabled()),
                       lambda: f"{op}: has no gradient; detach x_planar and centroids")
    return s, d, n, k
