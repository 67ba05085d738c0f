"""The one table the cross-cutting tests read: every registered family's examples
(compressops.configs.Family.examples), plus a tiny float model, inputs and calibration data per kind.

A new family registers its examples and is covered by TorchScript, thread safety, the C++ server,
save/load and the model zoo at once.
"""

import torch
from torch import nn

import compressops as co

from .helpers import randn_nonzero

# example name -> (config, kind); kind is "linear" or "conv"
EXAMPLES = {name: example for fam in co.configs.families() for name, example in fam.examples.items()}
# example name -> its family's name
FAMILY = {name: fam.name for fam in co.configs.families() for name in fam.examples}
# family name -> its first example (the one tests that take a single config per family use)
FIRST = {fam.name: next(iter(fam.examples)) for fam in co.configs.families() if fam.examples}

_CONV_HW = (9, 7)  # odd sizes: the stride-2 conv rounds down


def tiny_model(kind: str) -> nn.Module:
    """A small float model with three convertible layers, so a config that keeps the first and last
    layer dense still converts one. linear: [B, 96] -> [B, 24]; conv: [B, 16, 9, 7] -> [B, 8]."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(96, 80), nn.ReLU(), nn.Linear(80, 72), nn.ReLU(), nn.Linear(72, 24))
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.Hardtanh(), nn.Conv2d(24, 24, 3, stride=2, padding=1),
                             nn.Hardtanh(), nn.Conv2d(24, 16, 1), nn.Flatten(), nn.Linear(16 * 5 * 4, 8))
    raise ValueError(f"unknown kind {kind!r}")


def tiny_input(kind: str, batch: int = 3) -> torch.Tensor:
    """Random float32 input for tiny_model(kind) with `batch` rows."""
    return randn_nonzero(batch, 96) if kind == "linear" else randn_nonzero(batch, 16, *_CONV_HW)


def calibration_data(kind: str) -> list[torch.Tensor]:
    """Batches enough for a full-rank input statistic of every layer (GPTQ's Hessian)."""
    return [tiny_input(kind, 64) for _ in range(3)]


def convert_example(name: str, model: nn.Module | None = None) -> nn.Module:
    """`model` (default: a tiny_model of the example's kind) converted with example `name`,
    with calibration data when its config needs some, in eval mode."""
    config, kind = EXAMPLES[name]
    model = tiny_model(kind) if model is None else model
    # only where required: optional calibration (e.g. PQ's codebook refinement) changes no module
    # behaviour these tests check, and costs seconds
    cal = calibration_data(kind) if config.needs_calibration else None
    model = co.convert(model, config, calibration_data=cal).eval()
    assert any(isinstance(m, co.configs.compressed_types()) for m in model.modules()), f"{name} converted nothing"
    return model
