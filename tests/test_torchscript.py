"""Converted models script, save and load as TorchScript (servers that embed the ops through
torch.jit) and give the eager result."""

import io
import warnings

import pytest
import torch

from .families import EXAMPLES, convert_example, tiny_input
from .helpers import randn_nonzero


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_round_trip(name, mode):
    model, x = convert_example(name), tiny_input(EXAMPLES[name][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        ts = torch.jit.script(model) if mode == "script" else torch.jit.trace(model, x)
        buf = io.BytesIO()
        torch.jit.save(ts, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    eager = model(x)
    assert torch.equal(loaded(x), eager)
    x2 = randn_nonzero(5, *x.shape[1:])  # another batch size through the saved program
    assert torch.equal(loaded(x2), model(x2))
