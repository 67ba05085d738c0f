"""Conversion configs: one dataclass per format; defaults work on a first try."""

from __future__ import annotations

from dataclasses import asdict, dataclass

_INT8_ACT_MODES = ("dynamic", "static", "weight_only")

# format name (as saved in files) -> config class
_FORMATS: dict[str, type] = {}


def _register_format(name: str):
    """Class decorator: make `name` the saved format name of a config (see to_dict/config_from_dict)."""

    def wrap(cls):
        _FORMATS[name] = cls
        cls.format_name = name
        return cls

    return wrap


@_register_format("int8")
@dataclass(frozen=True)
class Int8:
    """int8 weights, per-output-channel symmetric scale (DESIGN.md section 4).

    Args:
        act: how activations are handled:
            "dynamic" (default, W8A8): each input row quantized to int8 at run time;
            "static": one calibrated activation scale per layer (min-max observer over the
                `calibration_data` given to compressops.convert);
            "weight_only": activations stay float32/bfloat16, only the weight is int8.
    """

    act: str = "dynamic"

    def __post_init__(self):
        if self.act not in _INT8_ACT_MODES:
            raise ValueError(f"Int8(act={self.act!r}): act must be one of {', '.join(_INT8_ACT_MODES)}")

    @property
    def needs_calibration(self) -> bool:
        return self.act == "static"

    def to_dict(self) -> dict:
        return {"format": "int8", **asdict(self)}


# [int4 config]
_INT4_METHODS = ("rtn", "gptq")


@_register_format("int4")
@dataclass(frozen=True)
class Int4:
    """Group-wise 4-bit weights (DESIGN.md section 4); CPU kernels run W4A8.

    Args:
        group_size: input channels per scale/zero point: 32, 64, 128 (default) or 256.
        symmetric: zero point fixed at 8 (one scale per group, no zero points) instead of a
            per-group zero point (asymmetric, default).
        method: "rtn" (round to nearest) or "gptq" (error-compensated rounding with the inverse
            Hessian of each layer's inputs; needs `calibration_data` in compressops.convert).
    """

    group_size: int = 128
    symmetric: bool = False
    method: str = "rtn"

    def __post_init__(self):
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"Int4(group_size={self.group_size!r}): group_size must be 32, 64, 128 or 256")
        if self.method not in _INT4_METHODS:
            raise ValueError(f"Int4(method={self.method!r}): method must be one of {', '.join(_INT4_METHODS)}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"Int4(symmetric={self.symmetric!r}): symmetric must be a bool")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"

    def make_observer(self):
        """Observer convert attaches to each layer's input (GPTQ: the Hessian X^T X)."""
        from .algorithms.gptq import HessianObserver

        return HessianObserver()

    def to_dict(self) -> dict:
        return {"format": "int4", **asdict(self)}


# [sparse configs]


def _dtype_name(dtype, label: str, allowed: tuple[str, ...]):
    """None, a torch.dtype or its name -> the canonical name (or None)."""
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name not in allowed:
        raise ValueError(f"{label}: dtype must be None or one of {', '.join(allowed)}, got {dtype!r}")
    return name


@_register_format("sparse24")
@dataclass(frozen=True)
class Sparse24:
    """2:4 semi-structured sparsity: the 2 largest |w| of every 4 along K are kept (DESIGN.md section 4).

    A weight that already has a 2:4 pattern keeps it exactly. Magnitude pruning without fine-tuning
    costs accuracy; prune and fine-tune with compressops.algorithms.pruning first for the best results.

    Args:
        dtype: kept-value dtype: None keeps the layer's float dtype (float32, or bfloat16 for a
            bfloat16 layer), torch.float32 / torch.bfloat16, or torch.int8 (per-channel scales,
            activations quantized to int8 per row at run time).
    """

    dtype: object = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "Sparse24", ("float32", "bfloat16", "int8")))

    def torch_dtype(self, default=None):
        import torch

        return getattr(torch, self.dtype) if self.dtype is not None else default

    def to_dict(self) -> dict:
        return {"format": "sparse24", **asdict(self)}


@_register_format("csr")
@dataclass(frozen=True)
class CSR:
    """Unstructured sparsity stored as CSR (row pointer, 16/32-bit columns, values).

    Args:
        sparsity: fraction of weights set to zero by magnitude (e.g. 0.9), or None to keep the
            zeros the weight already has (a model pruned beforehand).
        scope: "layer" prunes each layer to `sparsity`; "global" uses one magnitude threshold over
            all layers compressops.convert converts with this config (so sparsity varies per layer).
        dtype: value dtype: None keeps the layer's float dtype (float32 or bfloat16), or
            torch.float32 / torch.bfloat16.
    """

    sparsity: float | None = None
    scope: str = "layer"
    dtype: object = None

    def __post_init__(self):
        if self.sparsity is not None and not (0.0 <= float(self.sparsity) < 1.0):
            raise ValueError(f"CSR(sparsity={self.sparsity!r}): sparsity must be None or in [0, 1)")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"CSR(scope={self.scope!r}): scope must be 'layer' or 'global'")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype, "CSR", ("float32", "bfloat16")))

    def torch_dtype(self, default=None):
        import torch

        return getattr(torch, self.dtype) if self.dtype is not None else default

    def prepare(self, layers) -> dict:
        """Called once by compressops.convert with every (name, module) it converts with this config:
        for scope="global", {name: the one magnitude threshold} (below it weights become zeros)."""
        if self.scope != "global" or self.sparsity is None:
            return {}
        from .algorithms.pruning import _global_threshold

        unique = {id(m): m.weight for _, m in layers}
        threshold = _global_threshold(list(unique.values()), self.sparsity)
        return {name: threshold for name, _ in layers}

    def to_dict(self) -> dict:
        return {"format": "csr", **asdict(self)}


# [pq config]
@_register_format("pq")
@dataclass(frozen=True)
class PQ:
    """Weight product quantization, inference by table lookup (DESIGN.md section 4, formats/pq.py).

    Each weight row is split into subvectors of `subvector_dim` values; every subspace gets a
    k-means codebook of `num_centroids` centroids and each subvector is stored as a code
    (log2(k) bits per d weights, plus the codebooks).

    Args:
        num_centroids: 16 (4-bit codes, the fast-scan kernel) or 256 (8-bit codes).
        subvector_dim: d in (1, 2, 4, 8, 16); K not a multiple of d is zero padded.
        refine: when compressops.convert gets calibration_data, re-fit the codebooks for the fixed
            codes to minimise each layer's output error on it (least squares on the Gram matrix
            X^T X; "And the Bit Goes Down"). Without calibration_data it is plain k-means.
        seed: k-means++ seed.
        max_iter: most Lloyd iterations per layer (stops earlier on convergence).
    """

    num_centroids: int = 256
    subvector_dim: int = 4
    refine: bool = True
    seed: int = 0
    max_iter: int = 25

    def __post_init__(self):
        if self.num_centroids not in (16, 256):
            raise ValueError(f"PQ(num_centroids={self.num_centroids!r}): must be 16 or 256")
        if self.subvector_dim not in (1, 2, 4, 8, 16):
            raise ValueError(f"PQ(subvector_dim={self.subvector_dim!r}): must be one of 1, 2, 4, 8, 16")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"PQ(max_iter={self.max_iter!r}): must be an int >= 1")

    @property
    def needs_calibration(self) -> bool:
        return False

    @property
    def uses_calibration(self) -> bool:
        """Calibration data is optional: it only feeds the codebook refinement."""
        return self.refine

    def make_observer(self):
        """Observer that accumulates the layer's input Gram matrix X^T X (all refinement needs)."""
        from .algorithms.pq_refine import GramObserver

        return GramObserver()

    def to_dict(self) -> dict:
        return {"format": "pq", **asdict(self)}


# [binary config]
_BINARY_SCALES = ("channel", "none")


@_register_format("binary")
@dataclass(frozen=True)
class Binary:
    """Binary (1-bit) weights, XNOR-popcount kernels (DESIGN.md section 4, compressops/formats/binary.py).

    Args:
        scale: "channel" (default): one fp32 scale per output channel, alpha = mean |w|;
            "none": alpha = 1 (pure +-1 weights).
        binarize_activations: True (default): activations are binarized at run time too (W1A1,
            XNOR-popcount kernels); False: activations stay float and the layer computes
            conv/linear(x, sign(w)) * alpha + bias (W1A32, additions and subtractions only).
        keep_first_last: leave the model's first and last convertible layer dense (the usual BNN
            recipe); compressops.convert applies it through model_filter.
    """

    scale: str = "channel"
    binarize_activations: bool = True
    keep_first_last: bool = True

    def __post_init__(self):
        if self.scale not in _BINARY_SCALES:
            raise ValueError(f"Binary(scale={self.scale!r}): scale must be one of {', '.join(_BINARY_SCALES)}")

    model_filter_reason = "Binary(keep_first_last=True): first and last layer stay float"

    def unsupported_reason(self, module) -> str | None:
        """Why compressops.convert leaves `module` dense (None: it converts). BinaryConv2d.from_float
        raises for the same settings."""
        from .nn.binary import BinaryConv2d

        return BinaryConv2d.unsupported_reason(module)

    def model_filter(self, model):
        """filter_fn for compressops.convert that leaves the first and last convertible layer of
        `model` dense when keep_first_last is True (None otherwise)."""
        if not self.keep_first_last:
            return None
        from .algorithms.binarize import first_last_filter

        return first_last_filter(model)

    def to_dict(self) -> dict:
        return {"format": "binary", **asdict(self)}


def config_from_dict(d: dict):
    """Inverse of Config.to_dict (used when loading a saved model)."""
    d = dict(d)
    fmt = d.pop("format")
    cls = _FORMATS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown compressops format {fmt!r} (known: {', '.join(sorted(_FORMATS))})")
    return cls(**d)
