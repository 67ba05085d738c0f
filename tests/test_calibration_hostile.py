"""Calibration data holding NaN/Inf (issue 18): every observer ignores the rows that hold them, says
so in a warning naming the layer, and raises when nothing finite is left, never falling back silently.
Ignoring a row must give exactly what calibrating without it gives."""

import warnings

import pytest
import torch

import compressops as co

from .families import EXAMPLES, tiny_input, tiny_model

CALIBRATED = sorted(n for n, (cfg, kind) in EXAMPLES.items() if cfg.uses_calibration and kind == "linear")


def _convert(name, cal):
    config, kind = EXAMPLES[name]
    torch.manual_seed(0)
    model = tiny_model(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        co.convert(model, config, calibration_data=cal)
    return model.eval(), [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_some_example_uses_calibration():
    assert CALIBRATED


@pytest.mark.parametrize("name", CALIBRATED)
def test_nan_rows_are_ignored_with_a_warning(name):
    _, kind = EXAMPLES[name]
    torch.manual_seed(1)
    clean = [tiny_input(kind, 48) for _ in range(3)]
    poisoned = [b.clone() for b in clean]
    poisoned[1] = torch.cat([poisoned[1], poisoned[1][:2]])
    poisoned[1][-2, 5] = float("nan")
    poisoned[1][-1, 0] = float("inf")
    ref_model, clean_warnings = _convert(name, clean)
    model, caught = _convert(name, poisoned)
    assert not clean_warnings
    assert any("convert: layer '0': calibration data: 2 of 146 input rows held NaN/Inf and were ignored" in m
               for m in caught), caught
    x = tiny_input(kind, 5)
    with torch.no_grad():
        y, ref = model(x), ref_model(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y, ref)


@pytest.mark.parametrize("name", CALIBRATED)
def test_only_non_finite_calibration_raises(name):
    config, kind = EXAMPLES[name]
    cal = torch.full_like(tiny_input(kind, 8), float("nan"))
    with pytest.raises(ValueError, match="convert: layer '0': every one of the 8 input rows .* held NaN/Inf"):
        co.convert(tiny_model(kind), config, calibration_data=cal)
