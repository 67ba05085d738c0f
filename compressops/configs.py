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

# [pq config]

# [binary config]


def config_from_dict(d: dict):
    """Inverse of Config.to_dict (used when loading a saved model)."""
    d = dict(d)
    fmt = d.pop("format")
    cls = _FORMATS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown compressops format {fmt!r} (known: {', '.join(sorted(_FORMATS))})")
    return cls(**d)
