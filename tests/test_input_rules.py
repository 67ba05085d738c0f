"""One input rule for every family (issue 18): x is float32, bfloat16 or float16; float64 raises the
same clear error from every compressed module, native kernel or reference, instead of an error about
an out_dtype nobody passed, or a silent cast."""

import pytest
import torch

import compressops as co

from .families import EXAMPLES, convert_example, tiny_input


def _first_layer_and_its_input(name):
    """The example's first compressed layer and the float32 input it sees in the model."""
    _, kind = EXAMPLES[name]
    model = convert_example(name)
    layer = next(m for m in model.modules() if isinstance(m, co.configs.compressed_types()))
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(tiny_input(kind))
    handle.remove()
    return layer, seen[0]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float64_input_raises_naming_x(name):
    layer, x = _first_layer_and_its_input(name)
    with pytest.raises(ValueError, match=r"x must be float32, bfloat16 or float16, got torch.float64"):
        layer(x.double())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float32_bfloat16_float16_inputs_run(name):
    layer, x = _first_layer_and_its_input(name)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = layer(x.to(dtype))
        assert torch.isfinite(y.float()).all()
