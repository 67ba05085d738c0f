"""Sparse24Linear and CSRLinear: drop-in replacements of nn.Linear with sparse weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import ops
from ..algorithms.pruning import global_threshold
from ..configs import CSR, Family, Sparse24, register_family
from ..formats import csr as csr_format
from ..formats import sparse24 as s24
from ..formats.checks import all_finite
from .compressed_linear import CompressedLinear, meta_skeleton, on_meta

__all__ = ["Sparse24Linear", "CSRLinear"]


def _float_dtype(weight: torch.Tensor) -> torch.dtype:
    return weight.dtype if weight.dtype in (torch.float32, torch.bfloat16) else torch.float32


class Sparse24Linear(CompressedLinear):
    """nn.Linear with a 2:4 semi-structured weight: 2 kept values of every 4 along in_features.

    Inputs: float32/bfloat16/float16 (..., in_features); the output has the input's dtype.

    state_dict: values [out, Kp/2] (float32, bfloat16 or int8), meta uint8 [out, ceil(Kp/8)]
    (2-bit positions), weight_scale float32 [out] (int8 only), bias float32 [out] (if any): the
    canonical format of compressops/formats/sparse24.py, Kp = in_features rounded up to 4. In memory
    the layer holds the pack (`weight_packed`, not saved) instead of values and meta, which are
    views into it: state_dict and load_state_dict translate, so the weight is never held twice.
    With int8 values the activations are quantized to int8 per row at run time (as Int8Linear).

    Example:
        >>> sp = Sparse24Linear.from_float(torch.nn.Linear(64, 32))
        >>> y = sp(torch.randn(4, 64))
    """

    _version = 1
    _fixed_dtype = ("weight_scale", "bias")
    # pruning needs finite weights
    _value_bounds: ClassVar[dict[str, float | None]] = {"weight_scale": 0.0, "values": None}
    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__, "values", "meta"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=torch.float32, device=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Sparse24Linear: in_features and out_features must be >= 1, got "
                             f"{in_features}, {out_features}")
        if dtype not in (torch.float32, torch.bfloat16, torch.int8):
            raise ValueError(f"Sparse24Linear: dtype must be float32, bfloat16 or int8, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        # The values' dtype, also in the pack's header; kept here so that the layer knows what to
        # load into a skeleton whose pack holds no data yet (to_empty after a meta build).
        self.values_dtype = dtype
        self.register_buffer("weight_packed", s24.zero_pack(out_features, in_features, dtype, device), persistent=False)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device)
                             if dtype == torch.int8 else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @property
    def values(self) -> torch.Tensor:
        """The kept values [out, Kp/2] (float32, bfloat16 or int8): a view into the pack."""
        return s24.unpack(self.weight_packed, "Sparse24Linear")[0]

    @property
    def meta(self) -> torch.Tensor:
        """The kept positions, uint8 [out, ceil(Kp/8)]: a view into the pack."""
        return s24.unpack(self.weight_packed, "Sparse24Linear")[1]

    @classmethod
    def from_float(cls, mod: nn.Linear, config: Sparse24 | None = None, name: str = "") -> Sparse24Linear:
        """Prune a float nn.Linear to 2:4 by magnitude (an existing 2:4 pattern is kept exactly).

        Raises:
            TypeError: not an nn.Linear. ValueError: NaN/Inf weights.
        """
        config = config or Sparse24()
        label = name or "Sparse24Linear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        dtype = config.torch_dtype(_float_dtype(mod.weight))
        w = mod.weight.detach()
        values, meta = s24.compress(w.to(torch.float32) if dtype == torch.int8 else w.to(dtype), name=label)
        m = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=dtype, device=w.device)
        if dtype == torch.int8:
            values, scale = s24.quantize_values(values)
            m.weight_scale.copy_(scale)
        m.weight_packed = ops.sparse24_pack(values, meta, mod.in_features)
        if mod.bias is not None:
            m.bias.copy_(mod.bias.detach().float())
        return m

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: Sparse24) -> Sparse24Linear:
        """An empty Sparse24Linear with the shapes of float `mod` (for compressops.load)."""
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None,
                   dtype=config.torch_dtype(_float_dtype(mod.weight)), device=mod.weight.device)

    @property
    def config(self) -> Sparse24:
        return Sparse24(dtype=self.values_dtype)

    @property
    def format_label(self) -> str:
        return f"2:4 {str(self.values.dtype).replace('torch.', '')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is not None:
            return ops.sparse24_int8_linear(x, self.weight_packed, self.weight_scale, self.bias)
        return ops.sparse24_linear(x, self.weight_packed, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 dense weight [out, in] this layer computes with."""
        w = s24.decompress(self.values, self.meta, self.in_features, torch.float32)
        return w * self.weight_scale[:, None] if self.weight_scale is not None else w

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's values, meta, weight_scale and bias)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _canonical_spec(self):
        kp = s24.padded_k(self.in_features)
        return {"values": (self.values_dtype, (self.out_features, kp // 2)),
                "meta": (torch.uint8, (self.out_features, s24.meta_bytes(self.in_features)))}

    def _canonical_state(self):
        values, meta, _ = s24.unpack(self.weight_packed, "Sparse24Linear.state_dict")
        # torch.save refuses two views of one storage as different dtypes, so meta (an eighth of a
        # byte per input channel and row, 1/16 of fp32 values) is a copy; the values stay a view.
        return {"values": values, "meta": meta.clone()}

    def _check_canonical(self, tensors):
        if s24.has_int8_min(tensors["values"]):
            return "values: the checkpoint holds -128, Sparse24Linear's symmetric int8 values lie in [-127, 127]"
        return None

    def _pack_canonical(self, tensors):
        self.weight_packed = ops.sparse24_pack(tensors["values"], tensors["meta"], self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=2:4 {str(self.values.dtype).replace('torch.', '')}")


class CSRLinear(CompressedLinear):
    """nn.Linear with an unstructured sparse weight stored as CSR.

    state_dict (version 3): crow int32 [out+1] (int64 when nnz >= 2^31), col uint16 [nnz] (int32 when
    in_features > 65536), values float32/bfloat16 [nnz], bias float32 [out] (if any): the canonical
    format of compressops/formats/csr.py. In memory the layer holds only the pack csr_pack builds
    (`index`, not saved: the shared header, an int64 row pointer and the columns in 16 or 32 bits)
    and `values`; `crow` and `col` decode the pack, and state_dict / load_state_dict translate, so the
    columns are never held twice. Every load validates crow and col (a corrupt file raises ValueError
    naming the key) before packing them. Versions 1 (crow, col int32) and 2 (`index`, the index of
    compressops 0.1) still load.

    Example:
        >>> sp = CSRLinear.from_float(torch.nn.Linear(64, 32), compressops.CSR(sparsity=0.9))
        >>> y = sp(torch.randn(4, 64))
    """

    _version = 3
    _fixed_dtype = ("values", "bias", "index")
    _value_bounds: ClassVar[dict[str, float | None]] = {"values": None}
    _pack_name = "index"
    __jit_unused_properties__ = CompressedLinear.__jit_unused_properties__ + ["crow", "col"]

    def __init__(self, in_features: int, out_features: int, nnz: int = 0, bias: bool = True, *,
                 dtype=torch.float32, device=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"CSRLinear: in_features and out_features must be >= 1, got {in_features}, "
                             f"{out_features}")
        if nnz < 0:
            raise ValueError(f"CSRLinear: nnz must be >= 0, got {nnz}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"CSRLinear: dtype must be float32 or bfloat16, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        # A placeholder built without csr_pack (every nonzero in column 0 of the last row, value 0):
        # the layer computes bias until from_float or load_state_dict fills it.
        self.register_buffer("index", csr_format.placeholder_pack(out_features, in_features, nnz, device),
                             persistent=False)
        self.register_buffer("values", torch.zeros(nnz, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @property
    def crow(self) -> torch.Tensor:
        """Row pointer, int32 [out+1] (int64 when nnz >= 2^31): a copy decoded from the pack."""
        return csr_format.unpack(self.index, "CSRLinear.crow")[0]

    @property
    def col(self) -> torch.Tensor:
        """Column of every nonzero, uint16 [nnz] (int32 when in_features > 65536): a copy decoded from the pack."""
        return csr_format.unpack(self.index, "CSRLinear.col")[1]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.index.device.type == "meta":  # a skeleton: the canonical dtypes and shapes, as _meta_state
            crow = torch.empty(self.out_features + 1, dtype=csr_format.crow_dtype(self.nnz), device="meta")
            col = torch.empty(self.nnz, dtype=csr_format.col_dtype(self.in_features), device="meta")
        else:
            crow, col = csr_format.unpack(self.index, "CSRLinear.state_dict")
        destination[prefix + "crow"] = crow
        destination[prefix + "col"] = col
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _buffer_spec(self, state_dict, prefix):
        spec = super()._buffer_spec(state_dict, prefix)
        values = state_dict.get(prefix + "values")
        if isinstance(values, torch.Tensor):  # nnz and the values' dtype come from the file
            spec["values"] = (values.dtype, (values.shape[0],))
        return spec

    def _before_copy(self, state_dict, prefix):
        values = state_dict.get(prefix + "values")
        if isinstance(values, torch.Tensor):
            self.values = torch.empty(values.shape, dtype=values.dtype, device=self.values.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Everything is checked before anything changes (the base class's contract): the values'
        # dtype and the index here, raising ValueError naming the key; the buffers there.
        label = "CSRLinear.load_state_dict"
        values = state_dict.get(prefix + "values")
        if isinstance(values, torch.Tensor) and (values.dtype not in csr_format.VALUE_DTYPES or values.dim() != 1):
            raise ValueError(f"{label}: {prefix}values must be a 1-D float32 or bfloat16 tensor, got "
                             f"{values.dtype} {tuple(values.shape)}")
        keys = {name: prefix + name for name in ("crow", "col", "index")}
        n, k = self.out_features, self.in_features
        if keys["crow"] in state_dict or keys["col"] in state_dict:  # versions 1 and 3
            names = (keys["crow"], keys["col"])
        elif keys["index"] in state_dict:  # version 2
            names = (keys["index"],)
        else:
            names = (keys["crow"], keys["col"])
        missing = [key for key in names if key not in state_dict]
        index = None
        if not missing and values is not None:
            if len(names) == 1:
                crow, col = csr_format.decode_v2_index(state_dict[keys["index"]], n, k, label, keys["index"])
                names = (f"{keys['index']} (its row pointer)", f"{keys['index']} (its columns)")
            else:
                crow, col = state_dict[keys["crow"]], state_dict[keys["col"]]
            crow, col = crow.detach().cpu(), col.detach().cpu()
            csr_format.check(crow, col, k, label, n=n, names=names)
            if col.shape[0] != values.numel():
                raise ValueError(f"{label}: {names[1]} has {col.shape[0]} entries but {prefix}values has "
                                 f"{values.numel()}")
            index = crow, col
        if strict and missing:
            missing_keys.extend(missing)
            return False
        if not super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                             unexpected_keys, error_msgs):
            return False
        # the base class knows only the persistent buffers: these keys are handled here
        handled = {key.split(" ")[0] for key in names}
        unexpected_keys[:] = [key for key in unexpected_keys if key not in handled]
        missing_keys.extend(missing)
        if index is not None:
            self.index = ops.csr_pack(*index, k).to(self.index.device)
        return True

    @classmethod
    def from_float(cls, mod: nn.Linear, config: CSR | None = None, name: str = "",
                   mask: torch.Tensor | None = None) -> CSRLinear:
        """Convert a float nn.Linear: keep its nonzeros (config.sparsity None), prune by magnitude to
        config.sparsity, or keep `mask` (bool [out, in], e.g. from a global threshold)."""
        config = config or CSR()
        label = name or "CSRLinear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        w = mod.weight.detach()
        if not all_finite(w):
            raise ValueError(f"{label}: weight holds NaN/Inf values")
        dtype = config.torch_dtype(_float_dtype(w))
        if mask is None:
            mask = csr_format.magnitude_mask(w, config.sparsity)
        crow, col, values = csr_format.compress(w.to(dtype), mask, name=label)
        m = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=dtype, device=w.device)
        m.index = ops.csr_pack(crow.cpu(), col.cpu(), mod.in_features).to(w.device)
        m.values = values
        if mod.bias is not None:
            m.bias.copy_(mod.bias.detach().float())
        return m

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: CSR) -> CSRLinear:
        """An empty CSRLinear with the shapes of float `mod`; load_state_dict sets nnz."""
        return cls(mod.in_features, mod.out_features, 0, bias=mod.bias is not None,
                   dtype=config.torch_dtype(_float_dtype(mod.weight)), device=mod.weight.device)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.in_features * self.out_features)

    @property
    def config(self) -> CSR:
        return CSR(sparsity=None, dtype=self.values.dtype)

    @property
    def format_label(self) -> str:
        return f"CSR {self.sparsity:.0%} {str(self.values.dtype).replace('torch.', '')}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.csr_linear(x, self.index, self.values, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 dense weight [out, in]."""
        h = csr_format.read_header(self.index, "CSRLinear.dequantize")
        rowptr, cols = csr_format.index_views(self.index, h)
        return csr_format.to_dense(rowptr, cols, self.values, self.in_features, torch.float32)

    def compressed_bytes(self) -> int:
        """Bytes of the stored format: the state_dict's crow, col, values and bias."""
        sizes = csr_format.canonical_bytes(self.out_features, self.in_features, self.nnz)
        return sizes + sum(t.numel() * t.element_size() for t in (self.values, self.bias) if t is not None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz} ({self.sparsity:.1%} sparse), values={str(self.values.dtype).replace('torch.', '')}")


def _convert_sparse24(mod: nn.Linear, config: Sparse24, name: str, calibration=None, prepared=None) -> Sparse24Linear:
    return Sparse24Linear.from_float(mod, config, name=name)


def _prepare_csr(config: CSR, layers) -> dict:
    """CSR(scope="global"): {name: the one magnitude threshold over every layer converted with config}."""
    if config.scope != "global" or config.sparsity is None or any(on_meta(m) for _, m in layers):
        return {}  # meta layers become skeletons: no values, no threshold
    unique = {id(m): m.weight for _, m in layers}  # a layer reachable under two names counts once
    threshold = global_threshold(list(unique.values()), config.sparsity)
    return {name: threshold for name, _ in layers}


def _convert_csr(mod: nn.Linear, config: CSR, name: str, calibration=None, prepared=None) -> CSRLinear:
    mask = None
    if prepared is not None:  # the global threshold _prepare_csr set
        mask = (mod.weight.detach().abs().float() > prepared) & (mod.weight.detach() != 0)
    return CSRLinear.from_float(mod, config, name=name, mask=mask)


register_family(Family(
    config=Sparse24, converts=(nn.Linear,), modules=(Sparse24Linear,), convert=_convert_sparse24,
    examples={"sparse24": (Sparse24(), "linear"), "sparse24_int8": (Sparse24(dtype=torch.int8), "linear")},
))
register_family(Family(
    config=CSR, converts=(nn.Linear,), modules=(CSRLinear,), convert=_convert_csr, prepare=_prepare_csr,
    examples={"csr": (CSR(sparsity=0.8), "linear"), "csr_global": (CSR(sparsity=0.7, scope="global"), "linear")},
))
