"""One input rule for every family (issue 18): x is float32, bfloat16 or float16; float64 raises the
same clear error from every compressed module, native kernel or reference, instead of an error about
an out_dtype nobody passed, or a silent cast."""

import pytest
import torch

import compressops as co

from .families import EXAMPLES, convert_example, tiny_input


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float64_input_raises_naming_x(name):
    _, kind = EXAMPLES[name]
    model = convert_example(name)
    layer = next(m for m in model.modules() if isinstance(m, co.configs.compressed_types()))
    x = tiny_input(kind).double()
    # the compressed layer alone (the float layers before it would accept float64)
    first_in = x if layer is next(iter(model.children())) else None
    if first_in is None:
        pytest.skip("the first layer stays dense in this example")
    with pytest.raises(ValueError, match=r"x must be (a )?float32, bfloat16 or float16.*float64"):
        layer(first_in)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float32_bfloat16_float16_inputs_run(name):
    _, kind = EXAMPLES[name]
    model = convert_example(name)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        layer = next(iter(model.children()))
        if not isinstance(layer, co.configs.compressed_types()):
            pytest.skip("the first layer stays dense in this example")
        y = layer(tiny_input(kind).to(dtype))
        assert torch.isfinite(y.float()).all()
