"""The 64-byte header every compressops pack starts with: the Python twin of csrc/common/pack_header.h.

A family's pack op writes it (make), its compute ops and unpackers read it (read) and check the
family's own fields and the pack's size against what N and K imply (check_layout). The reader trusts
nothing in it: a tampered, truncated, foreign or outdated pack raises ValueError, with the same
messages as the C++ host, before anything past the header is read.

Layout (little endian):

    offset  type      field
         0  uint32    magic "COPK" (0x4B504F43)
         4  uint32    header version (HEADER_VERSION)
         8  char[8]   format tag: the family's format name, ASCII, NUL padded
        16  uint32    format version: the family's layout version
        20  uint32    reserved, zero
        24  int64     N (output channels)
        32  int64     K (input channels)
        40  int64[3]  family fields (unused ones zero)

N and K lie in [1, 2^31).

Shape: a pack is a contiguous uint8 tensor (*rows, R) whose flat bytes are the header and then the
family's layout, zero padded at the end to a whole number of rows. Its leading dims `rows` are what a
fake kernel (which cannot read the header) needs for the output shape: (N,) for a linear pack, (OC,
KH, KW) for a convolution pack. R = ceil(layout bytes / prod(rows)), so padding costs < prod(rows) bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .checks import check_k, check_packed
from .checks import is_fake as _is_fake

MAGIC = 0x4B504F43
HEADER_VERSION = 1
HEADER_BYTES = 64
MAX_DIM = 2**31  # N, K < MAX_DIM
TAG_BYTES = 8
_STRUCT = struct.Struct("<II8sIIqq3q")
assert _STRUCT.size == HEADER_BYTES


@dataclass(frozen=True)
class Reader:
    """Who reads a pack, for messages: "<op>: <name> ... compressops.ops.<pack_op>"."""

    op: str
    name: str
    pack_op: str


@dataclass(frozen=True)
class PackHeader:
    tag: str
    version: int
    n: int
    k: int
    fields: tuple[int, int, int]


def make(tag: str, version: int, n: int, k: int, fields=(0, 0, 0), device=None) -> torch.Tensor:
    """The header of a `tag` pack (layout version `version`) of an [n, k] weight: uint8 [64]."""
    raw = tag.encode("ascii")
    if not 1 <= len(raw) <= TAG_BYTES:
        raise ValueError(f"pack tag {tag!r} must be 1 to {TAG_BYTES} ASCII characters")
    data = _STRUCT.pack(MAGIC, HEADER_VERSION, raw, version, 0, n, k, *fields)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def _printable(raw: bytes) -> str:
    raw = raw.split(b"\0", 1)[0]
    return "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in raw)


def pack_shape(rows, nbytes: int) -> tuple[int, ...]:
    """The shape (*rows, R) of a pack of `nbytes` bytes (header included) with leading dims `rows`."""
    rows = tuple(rows)
    per = math.prod(rows)
    return (*rows, (nbytes + per - 1) // per)


def flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """t's bytes in row-major order as a 1-D uint8 tensor (a view when t is already contiguous)."""
    flat = t.contiguous().view(-1)
    # A one-element tensor counts as contiguous whatever its stride, but view(dtype) needs stride 1.
    if flat.stride(0) != 1:
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8)


def shaped(flat: torch.Tensor, rows) -> torch.Tensor:
    """The pack of the uint8 bytes `flat` (header, then layout): zero padded and viewed as pack_shape."""
    shape = pack_shape(rows, flat.numel())
    pad = math.prod(shape) - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(shape)


def zeros(tag: str, version: int, rows, n: int, k: int, fields, nbytes: int, device=None) -> torch.Tensor:
    """A pack whose layout bytes are all zero, shaped pack_shape(rows, nbytes).

    Where zero bytes are the pack of the all-zero weight (the family's docstring says whether), a
    module skeleton holds this instead of running the pack op on a zero weight it will replace.
    """
    out = torch.zeros(pack_shape(rows, nbytes), dtype=torch.uint8, device=device)
    out.view(-1)[:HEADER_BYTES] = make(tag, version, n, k, fields, device=device)
    return out


def check_rows(packed: torch.Tensor, r: Reader, dims: int):
    """What a fake kernel can check of a pack (it cannot read the header): a contiguous `dims`-D
    uint8 tensor. Returns its leading dims packed.shape[:-1] (SymInts under torch.compile)."""
    check_packed(packed, r.op, r.name, r.pack_op, dims=dims)
    torch._check_value(packed.is_contiguous(), lambda: f"{r.op}: {r.name} must be contiguous")
    return tuple(packed.shape[:-1])


def linear_nk(x: torch.Tensor, packed: torch.Tensor, r: Reader, read_nk) -> tuple:
    """(N, K) of a linear op's pack, checked against x. A fake pack's header is data the fake kernel
    cannot read: N is then its first dimension and K is x's (the kernel checks the header when it
    runs on real tensors). Otherwise read_nk(packed, op) reads and checks the header and returns
    (N, K), and x's last dimension must be K."""
    if _is_fake(packed):
        (n,) = check_rows(packed, r, 2)
        return n, x.shape[-1]
    n, k = read_nk(packed, r.op)
    check_k(x, k, r.op, "the weight has K")
    return n, k


def read(packed: torch.Tensor, tag: str, version: int, r: Reader, dims: int = 2) -> PackHeader:
    """Parse the header of `packed` and check what every pack shares (see csrc/common/pack_header.h
    read_pack_header): a contiguous `dims`-D uint8 tensor, at least 64 bytes, magic, header version,
    tag, format version, reserved zero, 1 <= N, K < 2^31.

    Raises:
        ValueError: a check fails; the message names r.op and r.name.
    """
    check_rows(packed, r, dims)
    who, repack = f"{r.op}: {r.name}", f"; repack it with compressops.ops.{r.pack_op}"
    if packed.numel() < HEADER_BYTES:
        raise ValueError(f"{who} holds {packed.numel()} bytes, too few for a pack header ({HEADER_BYTES}){repack}")
    magic, header_version, raw_tag, found_version, reserved, n, k, *fields = _STRUCT.unpack(
        bytes(packed.view(-1)[:HEADER_BYTES].tolist()))
    if magic != MAGIC or header_version != HEADER_VERSION:
        raise ValueError(f"{who} does not start with a compressops pack header (version {HEADER_VERSION}){repack}")
    if raw_tag != tag.encode("ascii").ljust(TAG_BYTES, b"\0"):
        raise ValueError(f"{who} holds a '{_printable(raw_tag)}' pack, not a '{tag}' one")
    if found_version != version:
        raise ValueError(f"{who} is a '{tag}' pack of version {found_version}, this build reads version {version}"
                         f"{repack}")
    if reserved != 0:
        raise ValueError(f"{who}'s header is corrupt (reserved field {reserved})")
    if not (1 <= n < MAX_DIM and 1 <= k < MAX_DIM):
        raise ValueError(f"{who}'s header has N={n}, K={k}; both must be in [1, 2^31)")
    return PackHeader(tag, version, n, k, tuple(fields))


def check_layout(h: PackHeader, fields, packed: torch.Tensor, rows, nbytes: int, r: Reader) -> None:
    """The family's half of the check (check_pack_layout in the C++ header): the header's fields must
    be `fields` and the pack's shape pack_shape(rows, nbytes), where the family derives `fields`, the
    leading dims `rows` and the byte count `nbytes` (header included) from N, K and the fields.

    Raises:
        ValueError: a check fails; the message names r.op and r.name.
    """
    who = f"{r.op}: {r.name}"
    fields = tuple(fields)
    if h.fields != fields:
        raise ValueError(f"{who}'s header fields {_tuple(h.fields)} do not match a '{h.tag}' pack of N={h.n}, "
                         f"K={h.k} {_tuple(fields)}; repack it with compressops.ops.{r.pack_op}")
    want = pack_shape(rows, nbytes)
    if tuple(packed.shape) != want:
        raise ValueError(f"{who} has shape {_dims(packed.shape)} but its header (N={h.n}, K={h.k}) needs "
                         f"{_dims(want)}")


def _dims(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _tuple(fields) -> str:
    return "(" + ", ".join(str(f) for f in fields) + ")"
