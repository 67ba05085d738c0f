"""Converted models script, save and load as TorchScript (servers that embed the ops through
torch.jit) and give the eager result."""

import io
import warnings

import pytest
import torch
from torch import nn

import compressops as co

from .helpers import randn_nonzero

CONFIGS = {
    "int8": co.Int8(),
    "int8_weight_only": co.Int8(act="weight_only"),
    "int4": co.Int4(group_size=32),
    "sparse24": co.Sparse24(),
    "sparse24_int8": co.Sparse24(dtype=torch.int8),
    "csr": co.CSR(sparsity=0.7),
    "pq": co.PQ(num_centroids=16, subvector_dim=2, max_iter=3),
    "binary": co.Binary(keep_first_last=False),
    "binary_w1a32": co.Binary(keep_first_last=False, binarize_activations=False),
}


def _model(name):
    torch.manual_seed(0)
    if name.startswith("binary"):
        model = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.Hardtanh(), nn.Flatten(), nn.Linear(24 * 30, 8))
        return model, randn_nonzero(2, 16, 6, 5)
    return nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 8)), randn_nonzero(3, 96)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_round_trip(name, mode):
    model, x = _model(name)
    model = co.convert(model, CONFIGS[name]).eval()
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
