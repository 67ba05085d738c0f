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


def config_from_dict(d: dict):
    """Inverse of Config.to_dict (used when loading a saved model)."""
    d = dict(d)
    fmt = d.pop("format")
    cls = _FORMATS.get(fmt)
    if cls is None:
        raise ValueError(f"unknown compressops format {fmt!r} (known: {', '.join(sorted(_FORMATS))})")
    return cls(**d)
