"""The fuzz targets (fuzz/fuzz_targets.py, run by `make fuzz`) accept their own seeds, so they cannot rot
between fuzz runs: each one-input function accepts every seed and cleanly refuses each seed cut in half."""

import pytest

from fuzz import fuzz_targets as ft

from .families import FIRST
from .helpers import requires_native


@requires_native
@pytest.mark.parametrize("target", sorted(ft.TARGETS))
def test_one_input_runs_on_its_seeds(target):
    one_input, seeds = ft.TARGETS[target]
    # the first example of each family keeps this fast; make fuzz seeds every example
    inputs = seeds(list(FIRST.values())) if target == "load" else seeds()
    assert len(inputs) >= 8
    for data in inputs:
        assert one_input(data) is True  # a seed is valid: loaded and ran, or every op took the pack
        assert one_input(data[: len(data) // 2]) is False  # truncated: refused with a clean error
