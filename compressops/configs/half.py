"""Half: weights stored in float16, computed in float32 (compressops.nn.HalfLinear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config


@dataclass(frozen=True)
class Half(Config, format_name="half"):
    """float16 weight storage: half the bytes of a float32 layer, float32 arithmetic.

    Converts nn.Linear. The weight is rounded to float16 (round to nearest even); a layer with a
    weight beyond float16's range (|w| > 65504) or with NaN/Inf makes convert raise. The bias stays
    float32. Needs no calibration data and has no options.
    """
