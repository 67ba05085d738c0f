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


def config_from_dict(d: dict):
    """Inverse of Config.to_dict (used when loading a saved model)."""
    d = dict(d)
    fmt = d.pop("format")
    cls = _FORMATS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown compressops format {fmt!r} (known: {', '.join(sorted(_FORMATS))})")
    return cls(**d)
