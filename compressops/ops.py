"""Every compressops op, in four parts each: schema (csrc/ops.cpp, mirrored in _schemas.py for a
build without the native library), fake kernel, "default" kernel (the pure-PyTorch reference,
used wherever no native kernel is registered), and a typed public wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _schemas, reference
from .formats import int8 as int8_format
from .formats import int4 as int4_format

__all__ = ["int8_pack_weight", "int8_quantize_activation", "int8_linear", "int8_weight_only_linear",
           "native_kernels"]

_LIB = None


def _define_missing_schemas() -> None:
    """Without the native library, define the same schemas from Python so every op still exists."""
    global _LIB
    missing = [n for n in _schemas.SCHEMAS if not hasattr(torch.ops.compressops, n)]
    if not missing:
        return
    _LIB = torch.library.Library("compressops", "FRAGMENT")
    for name in missing:
        _LIB.define(name + _schemas.SCHEMAS[name])


_define_missing_schemas()


def native_kernels(op: str) -> list[str]:
    """Dispatch keys with a native (C++/CUDA) kernel for compressops::<op>, e.g. ["CPU"]."""
    lines = torch._C._dispatch_dump(f"compressops::{op}").splitlines()
    return [key for key in ("CPU", "CUDA") if any(ln.startswith(f"{key}: registered") and "library.py" not in ln
                                                   for ln in lines)]


TRITON_CUDA_OPS: dict[str, str] = {}  # op -> "compressops.triton.<module>.<fn>", its CUDA kernel


def _register_triton_cuda(op: str, module: str, fn: str) -> None:
    """Register compressops.triton.<module>.<fn> as the CUDA kernel of compressops::<op>.

    The Triton module is imported on the first CUDA call, never at import time. A native CUDA
    kernel (csrc/cuda) registered for the same op takes precedence: nothing is registered then.
    """
    if "CUDA" in native_kernels(op):
        return

    def cuda_kernel(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"compressops.triton.{module}"), fn)(*args, **kwargs)

    torch.library.register_kernel(f"compressops::{op}", "cuda", cuda_kernel)
    TRITON_CUDA_OPS[op] = f"compressops.triton.{module}.{fn}"


# ---------------------------------------------------------------------------------------------
# int8_pack_weight

@torch.library.register_fake("compressops::int8_pack_weight")
def _(w_q):
    torch._check(w_q.dtype == torch.int8, lambda: f"int8_pack_weight: w_q must be int8, got {w_q.dtype}")
    torch._check(w_q.dim() == 2, lambda: f"int8_pack_weight: w_q must be 2-D, got {w_q.dim()}-D")
    return w_q.new_empty((int8_format.packed_bytes(w_q.shape[0], w_q.shape[1]),), dtype=torch.uint8)


torch.library.register_kernel("compressops::int8_pack_weight", "CompositeExplicitAutograd", reference.int8_pack_weight)


def int8_pack_weight(w_q: Tensor) -> Tensor:
    """Prepack an int8 weight for the int8 linear kernels.

    Args:
        w_q: int8 [N, K], values in [-127, 127] (as from compressops.formats.int8.quantize_weight).
    Returns:
        uint8 [compressops.formats.int8.packed_bytes(N, K)], the prepacked layout described in
        compressops/formats/int8.py. Build it once per weight and reuse it.
    """
    return torch.ops.compressops.int8_pack_weight(w_q)


# ---------------------------------------------------------------------------------------------
# int8_quantize_activation

@torch.library.register_fake("compressops::int8_quantize_activation")
def _(x, act_scale=None):
    torch._check(x.is_floating_point(), lambda: f"int8_quantize_activation: x must be float, got {x.dtype}")
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


torch.library.register_kernel("compressops::int8_quantize_activation", "CompositeExplicitAutograd",
                              reference.int8_quantize_activation)


def int8_quantize_activation(x: Tensor, act_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each row (last dim) of x, as int8_linear does internally.

    Args:
        x: float32/bfloat16/float16 (..., K), any strides.
        act_scale: None for dynamic per-row scales, or a one-element float32 tensor (static).
    Returns:
        (q int8 (..., K), scale float32 (...)), with x ~= q * scale[..., None]. The exact rule
        (rounding, zero rows, NaN) is in compressops.reference.int8_quantize_activation.
    """
    return torch.ops.compressops.int8_quantize_activation(x, act_scale)


# ---------------------------------------------------------------------------------------------
# int8_linear and int8_weight_only_linear

def _fake_linear(op, x, w_packed, w_scale, bias, out_dtype):
    torch._check(x.is_floating_point(), lambda: f"{op}: x must be float, got {x.dtype}")
    torch._check(w_packed.dtype == torch.uint8, lambda: f"{op}: w_packed must be uint8, got {w_packed.dtype}")
    torch._check(w_scale.dim() == 1, lambda: f"{op}: w_scale must be 1-D [N], got {w_scale.dim()}-D")
    n = w_scale.shape[0]
    torch._check(bias is None or bias.shape == (n,), lambda: f"{op}: bias must have shape [{n}]")
    return x.new_empty((*x.shape[:-1], n), dtype=out_dtype or x.dtype)


@torch.library.register_fake("compressops::int8_linear")
def _(x, w_packed, w_scale, bias=None, act_scale=None, out_dtype=None):
    return _fake_linear("int8_linear", x, w_packed, w_scale, bias, out_dtype)


torch.library.register_kernel("compressops::int8_linear", "CompositeExplicitAutograd", reference.int8_linear)


def int8_linear(
    x: Tensor,
    w_packed: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    act_scale: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """W8A8 linear: y = (q(x) @ w_q.T) * (x_scale * w_scale) + bias, int32 accumulation.

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        w_packed: uint8, from int8_pack_weight(w_q) with w_q int8 [N, K].
        w_scale: float32 [N], per output channel.
        bias: optional float [N].
        act_scale: None quantizes each row of x dynamically (symmetric, per row); a one-element
            float32 tensor gives a static (calibrated) scale.
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype. Bit-identical to compressops.reference.int8_linear on every CPU ISA.
    """
    return torch.ops.compressops.int8_linear(x, w_packed, w_scale, bias, act_scale, out_dtype)


@torch.library.register_fake("compressops::int8_weight_only_linear")
def _(x, w_packed, w_scale, bias=None, out_dtype=None):
    return _fake_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, out_dtype)


torch.library.register_kernel("compressops::int8_weight_only_linear", "CompositeExplicitAutograd",
                              reference.int8_weight_only_linear)
_register_triton_cuda("int8_linear", "int8_linear", "int8_linear")
_register_triton_cuda("int8_weight_only_linear", "int8_linear", "int8_weight_only_linear")


def int8_weight_only_linear(
    x: Tensor,
    w_packed: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Weight-only int8 linear: activations stay float; y = (x @ w_q.T) * w_scale + bias.

    Args:
        x: float32/bfloat16/float16 (..., K).
        w_packed, w_scale, bias, out_dtype: as in int8_linear.
    Returns:
        (..., N) in out_dtype; float32 accumulation, so equal to the reference within float
        rounding (not bitwise).
    """
    return torch.ops.compressops.int8_weight_only_linear(x, w_packed, w_scale, bias, out_dtype)


# [int4 ops]  (each family: its own section below its marker; extend __all__ there)
__all__ += ["int4_pack_weight", "int4_linear"]


@torch.library.register_fake("compressops::int4_pack_weight")
def _(qweight, scales, zeros, in_features, group_size):
    torch._check(qweight.dtype == torch.uint8, lambda: f"int4_pack_weight: qweight must be uint8, got {qweight.dtype}")
    torch._check(qweight.dim() == 2, lambda: f"int4_pack_weight: qweight must be 2-D, got {qweight.dim()}-D")
    return qweight.new_empty((int4_format.packed_bytes(qweight.shape[0], in_features, group_size),), dtype=torch.uint8)


torch.library.register_kernel("compressops::int4_pack_weight", "CompositeExplicitAutograd", reference.int4_pack_weight)


def int4_pack_weight(qweight: Tensor, scales: Tensor, zeros: Tensor | None, in_features: int,
                     group_size: int) -> Tensor:
    """Prepack a canonical int4 weight (compressops/formats/int4.py) for the int4 linear kernels.

    Args:
        qweight: uint8 [N, K_pad/2], two codes a byte (low nibble = even k), K_pad = in_features
            rounded up to group_size.
        scales: float32 [N, G]. zeros: uint8 [N, G] in [0, 15], or None for symmetric (z = 8).
        in_features: K, the number of columns of the inputs.
        group_size: 32, 64, 128 or 256.
    Returns:
        uint8 [compressops.formats.int4.packed_bytes(N, K, group_size)]: codes, scales and
        zero*scale in the kernel layout. Build it once per weight and reuse it.
    """
    return torch.ops.compressops.int4_pack_weight(qweight, scales, zeros, in_features, group_size)


@torch.library.register_fake("compressops::int4_linear")
def _(x, w_packed, out_features, bias=None, out_dtype=None):
    torch._check(x.is_floating_point(), lambda: f"int4_linear: x must be float, got {x.dtype}")
    torch._check(w_packed.dtype == torch.uint8, lambda: f"int4_linear: w_packed must be uint8, got {w_packed.dtype}")
    torch._check(bias is None or bias.shape == (out_features,),
                 lambda: f"int4_linear: bias must have shape [{out_features}]")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype or x.dtype)


torch.library.register_kernel("compressops::int4_linear", "CompositeExplicitAutograd", reference.int4_linear)


def int4_linear(x: Tensor, w_packed: Tensor, out_features: int, bias: Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> Tensor:
    """Int4 (group-wise) linear, W4A8: y ~= x @ dequantize(w).T + bias.

    Each row of x is quantized to int8 per group of group_size columns (symmetric, amax/127),
    dotted exactly in integers with the 4-bit codes, and the group's scales and zero point are
    applied in fp32 (exact formula in compressops.reference.int4_linear). Relative error against
    the fp32 product with the dequantized weight: about 0.5-1% on Gaussian data (tests bound it at 2%).

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        w_packed: uint8 from int4_pack_weight (holds the codes, scales and zero points).
        out_features: N (the pack's N; given so shapes are known without reading the data).
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype; within fp32 rounding of compressops.reference.int4_linear.
    """
    return torch.ops.compressops.int4_linear(x, w_packed, out_features, bias, out_dtype)


_register_triton_cuda("int4_linear", "int4_linear", "int4_linear")

# [sparse ops]
# 2:4 semi-structured (compressops/formats/sparse24.py) and CSR (compressops/formats/csr.py).

__all__ += ["sparse24_linear", "sparse24_int8_linear", "csr_pack", "csr_linear"]


def _fake_sparse_out(op, x, n, bias):
    torch._check(x.is_floating_point(), lambda: f"{op}: x must be float, got {x.dtype}")
    torch._check(bias is None or bias.shape == (n,), lambda: f"{op}: bias must have shape [{n}]")
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("compressops::sparse24_linear")
def _(x, values, meta, in_features, bias=None):
    torch._check(values.dim() == 2, lambda: "sparse24_linear: values must be 2-D [N, Kp/2]")
    return _fake_sparse_out("sparse24_linear", x, values.shape[0], bias)


torch.library.register_kernel("compressops::sparse24_linear", "CompositeExplicitAutograd", reference.sparse24_linear)


def sparse24_linear(x: Tensor, values: Tensor, meta: Tensor, in_features: int, bias: Tensor | None = None) -> Tensor:
    """2:4 sparse linear: y = x @ W.T + bias, W given by its kept values and 2-bit positions.

    Args:
        x: float32/bfloat16/float16 (..., K) with K = in_features, any leading dims and strides.
        values: float32 or bfloat16 [N, Kp/2] (Kp = K rounded up to 4), from
            compressops.formats.sparse24.compress.
        meta: uint8 [N, ceil(Kp/8)] positions (bit order in compressops/formats/sparse24.py).
        in_features: K.
        bias: optional float [N].
    Returns:
        (..., N) in x.dtype; float32 accumulation (equal to the reference within float rounding).
    """
    return torch.ops.compressops.sparse24_linear(x, values, meta, in_features, bias)


_register_triton_cuda("sparse24_linear", "sparse24_linear", "sparse24_linear")


@torch.library.register_fake("compressops::sparse24_int8_linear")
def _(x, values, meta, w_scale, in_features, bias=None):
    torch._check(values.dim() == 2, lambda: "sparse24_int8_linear: values must be 2-D [N, Kp/2]")
    return _fake_sparse_out("sparse24_int8_linear", x, values.shape[0], bias)


torch.library.register_kernel("compressops::sparse24_int8_linear", "CompositeExplicitAutograd",
                              reference.sparse24_int8_linear)
_register_triton_cuda("sparse24_int8_linear", "sparse24_linear", "sparse24_int8_linear")


def sparse24_int8_linear(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, in_features: int,
                         bias: Tensor | None = None) -> Tensor:
    """2:4 sparse linear with int8 kept values and dynamic per-row int8 activations.

    y = float(q(x) @ Wq.T) * (x_scale * w_scale) + bias, with q(x) exactly as
    compressops.ops.int8_quantize_activation and an exact int32 sum.

    Args:
        x: float32/bfloat16/float16 (..., K).
        values: int8 [N, Kp/2] in [-127, 127]; meta: uint8 [N, ceil(Kp/8)]; w_scale: float32 [N].
        in_features: K. bias: optional float [N].
    Returns:
        (..., N) in x.dtype, bit-identical to compressops.reference.sparse24_int8_linear.
    """
    return torch.ops.compressops.sparse24_int8_linear(x, values, meta, w_scale, in_features, bias)


@torch.library.register_fake("compressops::csr_pack")
def _(crow, col, in_features):
    from .formats import csr as csr_format

    n = crow.shape[0] - 1
    return crow.new_empty((csr_format.packed_bytes(n, in_features, col.shape[0]),), dtype=torch.uint8)


torch.library.register_kernel("compressops::csr_pack", "CompositeExplicitAutograd", reference.csr_pack)


def csr_pack(crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """Validate a CSR index once and pack it for csr_linear (16-bit columns when K <= 65536).

    Args:
        crow: int32/int64 [N+1]; col: int32 [nnz] in [0, in_features).
    Returns:
        uint8 [compressops.formats.csr.packed_bytes(N, K, nnz)] (layout in compressops/formats/csr.py).
    """
    return torch.ops.compressops.csr_pack(crow, col, in_features)


@torch.library.register_fake("compressops::csr_linear")
def _(x, packed, values, out_features, bias=None):
    return _fake_sparse_out("csr_linear", x, out_features, bias)


torch.library.register_kernel("compressops::csr_linear", "CompositeExplicitAutograd", reference.csr_linear)
_register_triton_cuda("csr_linear", "csr_linear", "csr_linear")


def csr_linear(x: Tensor, packed: Tensor, values: Tensor, out_features: int, bias: Tensor | None = None) -> Tensor:
    """CSR sparse linear: y = x @ W.T + bias.

    Args:
        x: float32/bfloat16/float16 (..., K).
        packed: uint8 index pack from csr_pack(crow, col, K).
        values: float32 or bfloat16 [nnz] (the CSR values, in crow/col order).
        out_features: N. bias: optional float [N].
    Returns:
        (..., N) in x.dtype; float32 accumulation.
    """
    return torch.ops.compressops.csr_linear(x, packed, values, out_features, bias)


# [pq ops]

def _pq_format():
    from .formats import pq as pq_format

    return pq_format


@torch.library.register_fake("compressops::pq_pack")
def _(codes, codebooks, in_features):
    torch._check(codebooks.dim() == 3, lambda: f"pq_pack: codebooks must be [S, k, d], got {codebooks.dim()}-D")
    torch._check(codes.dim() == 2, lambda: f"pq_pack: codes must be 2-D, got {codes.dim()}-D")
    _, k, d = codebooks.shape
    return codes.new_empty((_pq_format().packed_bytes(codes.shape[0], in_features, d, k),), dtype=torch.uint8)


torch.library.register_kernel("compressops::pq_pack", "CompositeExplicitAutograd", reference.pq_pack)


def pq_pack(codes: Tensor, codebooks: Tensor, in_features: int) -> Tensor:
    """Prepack canonical PQ buffers for the pq_linear kernels.

    Args:
        codes: uint8 [N, S] (k=256) or [N, ceil(S/2)] (k=16, two 4-bit codes a byte, low nibble =
            even subspace), S = ceil(in_features / d).
        codebooks: float32 [S, k, d], k in (16, 256), d in (1, 2, 4, 8, 16).
        in_features: K (the layer's input width; K <= S * d, the rest is zero padding).
    Returns:
        uint8 [compressops.formats.pq.packed_bytes(N, K, d, k)], the layout described in
        compressops/formats/pq.py. Build it once per layer and reuse it.
    """
    return torch.ops.compressops.pq_pack(codes, codebooks, in_features)


@torch.library.register_fake("compressops::pq_linear")
def _(x, packed, in_features, out_features, bias=None, out_dtype=None):
    torch._check(x.is_floating_point(), lambda: f"pq_linear: x must be float, got {x.dtype}")
    torch._check(packed.dtype == torch.uint8, lambda: f"pq_linear: packed must be uint8, got {packed.dtype}")
    torch._check(bias is None or bias.shape == (out_features,),
                 lambda: f"pq_linear: bias must have shape [{out_features}]")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype or x.dtype)


torch.library.register_kernel("compressops::pq_linear", "CompositeExplicitAutograd", reference.pq_linear)


def pq_linear(
    x: Tensor,
    packed: Tensor,
    in_features: int,
    out_features: int,
    bias: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Product-quantized linear by table lookup: y[n] = sum_s x_s . C_s[code(n, s)] + bias[n].

    Args:
        x: float32/bfloat16/float16 (..., in_features), any leading dims (including empty), any strides.
        packed: uint8 from pq_pack(codes, codebooks, in_features).
        in_features, out_features: K and N (checked against the pack).
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype.
        k=256: fp32 tables, equal to compressops.reference.pq_linear within fp32 summation rounding
        (from 2 input rows on, the CPU kernel builds the tables of up to 16 rows side by side, so
        one code looks up all of them with contiguous vector loads).
        k=16: the CPU kernel quantizes each row's table to uint8 (one scale per row, one offset per
        subspace) and sums exactly in integers, so |y - reference| <= S * scale / 2 (plus fp32
        rounding), scale = max_s (max_c L[s, c] - min_c L[s, c]) / 255 for that input row.
    """
    return torch.ops.compressops.pq_linear(x, packed, in_features, out_features, bias, out_dtype)


_register_triton_cuda("pq_linear", "pq_linear", "pq_linear")

__all__ += ["pq_pack", "pq_linear"]

# [binary ops]

__all__ += ["binary_pack_activation", "binary_conv2d", "binary_conv2d_packed", "binary_linear"]


@torch.library.register_fake("compressops::binary_pack_activation")
def _(x):
    torch._check(x.is_floating_point(), lambda: f"binary_pack_activation: x must be float, got {x.dtype}")
    cw = (x.shape[1] + 63) // 64 if x.dim() == 4 else (x.shape[-1] + 63) // 64
    if x.dim() == 4:
        return x.new_empty((x.shape[0], x.shape[2], x.shape[3], cw), dtype=torch.int64)
    return x.new_empty((*x.shape[:-1], cw), dtype=torch.int64)


torch.library.register_kernel("compressops::binary_pack_activation", "CompositeExplicitAutograd",
                              reference.binary_pack_activation)


def binary_pack_activation(x: Tensor) -> Tensor:
    """Fused sign-and-pack of activations (x >= 0 -> bit 1, so sign(0) = +1).

    Args:
        x: float32/bfloat16/float16. 4-D is read as NCHW (any memory format, channels_last is the
            fast case); any other rank packs the last dimension.
    Returns:
        int64 [N, H, W, ceil(C/64)] for 4-D x, else (..., ceil(C/64)); channel c is bit c % 64 of
        word c // 64, pad bits 0 (compressops/formats/binary.py).
    """
    return torch.ops.compressops.binary_pack_activation(x)


def _binary_conv_out_nhw(x_packed, kernel_size, stride, padding):
    """(N, OH, OW) of a binary conv over packed x [N, H, W, CW] (for the fake kernels)."""
    h, w = x_packed.shape[1], x_packed.shape[2]
    oh = (h + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    return x_packed.shape[0], oh, ow


@torch.library.register_fake("compressops::binary_conv2d")
def _(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding, clamp_min=None, clamp_max=None):
    torch._check(x_packed.dtype == torch.int64, lambda: "binary_conv2d: x_packed must be int64")
    torch._check(w_packed.dtype == torch.int64, lambda: "binary_conv2d: w_packed must be int64")
    n, oh, ow = _binary_conv_out_nhw(x_packed, kernel_size, stride, padding)
    return x_packed.new_empty((n, w_packed.shape[0], oh, ow), dtype=torch.float32).contiguous(
        memory_format=torch.channels_last)


def _binary_conv2d_default(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding,
                           clamp_min=None, clamp_max=None):
    return reference.binary_conv2d(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding,
                                   clamp_min, clamp_max).contiguous(memory_format=torch.channels_last)


torch.library.register_kernel("compressops::binary_conv2d", "CompositeExplicitAutograd", _binary_conv2d_default)


def binary_conv2d(
    x_packed: Tensor,
    w_packed: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    in_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    clamp_min: float | None = None,
    clamp_max: float | None = None,
) -> Tensor:
    """XNOR-popcount conv2d: alpha * (valid_bits - 2 * popcount(x XOR w)) + bias, then clamped.

    Equals conv2d(sign(x), sign(w), stride, zero padding) * alpha + bias bit for bit (padded taps
    contribute 0). Dilation 1, groups 1.

    Args:
        x_packed: int64 [N, H, W, ceil(in_channels/64)] from binary_pack_activation.
        w_packed: int64 [OC, KH, KW, ceil(in_channels/64)] (compressops.formats.binary.binarize_weight).
        alpha: float32 [OC]. bias: optional float [OC].
        in_channels: C (the number of valid bits per tap).
        kernel_size, stride, padding: (h, w) pairs.
        clamp_min, clamp_max: optional bounds applied last (e.g. hard-tanh before the next binary layer).
    Returns:
        float32 [N, OC, OH, OW] in channels_last memory format.
    """
    return torch.ops.compressops.binary_conv2d(x_packed, w_packed, alpha, bias, in_channels,
                                                       list(kernel_size), list(stride), list(padding),
                                                       clamp_min, clamp_max)


@torch.library.register_fake("compressops::binary_conv2d_packed")
def _(x_packed, w_packed, alpha, bias, in_channels, kernel_size, stride, padding):
    torch._check(x_packed.dtype == torch.int64, lambda: "binary_conv2d_packed: x_packed must be int64")
    torch._check(w_packed.dtype == torch.int64, lambda: "binary_conv2d_packed: w_packed must be int64")
    n, oh, ow = _binary_conv_out_nhw(x_packed, kernel_size, stride, padding)
    return x_packed.new_empty((n, oh, ow, (w_packed.shape[0] + 63) // 64), dtype=torch.int64)


torch.library.register_kernel("compressops::binary_conv2d_packed", "CompositeExplicitAutograd",
                              reference.binary_conv2d_packed)


def binary_conv2d_packed(
    x_packed: Tensor,
    w_packed: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    in_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Tensor:
    """binary_conv2d whose output stays binary: the sign bits of alpha * acc + bias, packed for the
    next binary layer, so consecutive binary convs never unpack to float in between.

    Equals binary_pack_activation(binary_conv2d(...)) bit for bit (v >= 0 -> 1; NaN -> 0). A
    BatchNorm or a sign-preserving activation between the two layers is folded into alpha and bias
    first (compressops.nn.BinaryChain does that).

    Args:
        x_packed: int64 [N, H, W, ceil(in_channels/64)] from binary_pack_activation (or this op).
        w_packed: int64 [OC, KH, KW, ceil(in_channels/64)]. alpha: float32 [OC]. bias: optional [OC].
        in_channels, kernel_size, stride, padding: as binary_conv2d.
    Returns:
        int64 [N, OH, OW, ceil(OC/64)], channel padding bits 0.
    """
    return torch.ops.compressops.binary_conv2d_packed(x_packed, w_packed, alpha, bias, in_channels,
                                                      list(kernel_size), list(stride), list(padding))


@torch.library.register_fake("compressops::binary_linear")
def _(x_packed, w_packed, alpha, bias, in_features, clamp_min=None, clamp_max=None):
    torch._check(x_packed.dtype == torch.int64, lambda: "binary_linear: x_packed must be int64")
    torch._check(w_packed.dtype == torch.int64, lambda: "binary_linear: w_packed must be int64")
    return x_packed.new_empty((*x_packed.shape[:-1], w_packed.shape[0]), dtype=torch.float32)


torch.library.register_kernel("compressops::binary_linear", "CompositeExplicitAutograd", reference.binary_linear)


def binary_linear(x_packed: Tensor, w_packed: Tensor, alpha: Tensor, bias: Tensor | None, in_features: int,
                  clamp_min: float | None = None, clamp_max: float | None = None) -> Tensor:
    """XNOR-popcount linear: (sign(x) @ sign(w).T) * alpha + bias, then clamped; bit-exact.

    Args:
        x_packed: int64 [..., ceil(in_features/64)] from binary_pack_activation.
        w_packed: int64 [OUT, ceil(in_features/64)]. alpha: float32 [OUT]. bias: optional [OUT].
    Returns:
        float32 [..., OUT].
    """
    return torch.ops.compressops.binary_linear(x_packed, w_packed, alpha, bias, in_features,
                                                       clamp_min, clamp_max)
