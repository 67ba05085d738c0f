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

# [sparse configs]

# [pq config]

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
            recipe). compressops.convert hands layers to handlers one at a time, so this is applied
            by compressops.algorithms.binarize.binarize(model, config), or by passing
            filter_fn=config.model_filter(model) to compressops.convert.
    """

    scale: str = "channel"
    binarize_activations: bool = True
    keep_first_last: bool = True

    def __post_init__(self):
        if self.scale not in _BINARY_SCALES:
            raise ValueError(f"Binary(scale={self.scale!r}): scale must be one of {', '.join(_BINARY_SCALES)}")

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
