"""Int8: int8 weights with a per-output-channel scale (compressops.nn.Int8Linear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config

_ACT_MODES = ("dynamic", "static", "weight_only")


@dataclass(frozen=True)
class Int8(Config, format_name="int8"):
    """int8 weights, per-output-channel symmetric scale (DESIGN.md section 4).

    Args:
        act: how activations are handled:
            "dynamic" (default, W8A8): each input row quantized to int8 at run time;
            "static": one calibrated activation scale per layer (min-max observer over the
                `calibration_data` given to compressops.convert);
            "weight_only": activations stay float32/bfloat16, only the weight is int8.
        embeddings: also convert nn.Embedding layers (to compressops.nn.Int8Embedding: int8 rows,
            one scale per row, gathered and dequantized row by row; `act` does not apply). Off by
            default: an embedding is usually the largest table of a model and the one whose error
            reaches every token, so it converts only where asked, by this flag on the config that
            a name or pattern maps it to (e.g. {"embeddings.word_embeddings": Int8(embeddings=True),
            "*": Int8()}). A Linear whose weight is tied to an Embedding's (GPT-2's lm_head) converts
            only together with it, sharing one int8 copy; alone it stays dense (compressops.report
            says why).
    """

    act: str = "dynamic"
    embeddings: bool = False

    def __post_init__(self):
        if self.act not in _ACT_MODES:
            raise ValueError(f"Int8(act={self.act!r}): act must be one of {', '.join(_ACT_MODES)}")

    @property
    def needs_calibration(self) -> bool:
        return self.act == "static"
