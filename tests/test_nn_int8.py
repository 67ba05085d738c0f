"""Int8Linear: accuracy against the float layer, state_dict, compile/export, dtypes, errors."""

import io

import pytest
import torch
from torch import nn

import compressops as co
from compressops import reference
from compressops.nn import Int8Linear

from .helpers import randn_nonzero


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_from_float_close_to_float_layer(act, bias):
    lin = nn.Linear(203, 77, bias=bias)
    q = Int8Linear.from_float(lin, co.Int8(act=act))
    x = randn_nonzero(3, 5, 203)
    with torch.no_grad():
        ref = lin(x)
    y = q(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    # int8 per-channel weights (and per-row activations) on Gaussian data: ~1% error.
    assert rel_err(y, ref) < (0.03 if act == "dynamic" else 0.015)


def test_static_mode_uses_calibrated_scale():
    lin = nn.Linear(64, 32)
    q = Int8Linear.from_float(lin, co.Int8(act="static"), act_scale=torch.tensor(3.0 / 127))
    x = randn_nonzero(8, 64).clamp(-3, 3)
    y = q(x)
    assert torch.equal(y, reference.int8_linear(x, q.weight_packed, q.weight_scale, q.bias, q.act_scale))
    assert rel_err(y, lin(x).detach()) < 0.05
    with pytest.raises(ValueError, match="calibration_data"):
        Int8Linear.from_float(lin, co.Int8(act="static"))


def test_bf16_input_and_module_to_bf16_keep_fp32_scales():
    lin = nn.Linear(128, 48)
    q = Int8Linear.from_float(lin)
    x = randn_nonzero(4, 128)
    y32 = q(x)
    scale_before = q.weight_scale.clone()
    q.to(torch.bfloat16)
    assert q.weight_scale.dtype == torch.float32 and torch.equal(q.weight_scale, scale_before)
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert rel_err(yb, y32) < 0.01


def test_state_dict_round_trip_and_repack():
    lin = nn.Linear(100, 40)
    q = Int8Linear.from_float(lin)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    assert "weight_packed" not in q.state_dict()
    fresh = Int8Linear(100, 40)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    x = randn_nonzero(6, 100)
    assert torch.equal(fresh(x), q(x))


def test_to_float_dequantize_and_repr():
    lin = nn.Linear(50, 20)
    q = Int8Linear.from_float(lin)
    back = q.to_float()
    assert isinstance(back, nn.Linear)
    assert rel_err(back.weight, lin.weight) < 0.01
    assert torch.equal(back.weight.detach(), q.dequantize())
    r = repr(q)
    assert "int8" in r and "in_features=50" in r and "act=dynamic" in r


def test_no_grad_inference_mode_and_empty_batch():
    q = Int8Linear.from_float(nn.Linear(32, 8))
    x = randn_nonzero(2, 32)
    with torch.no_grad():
        a = q(x)
    with torch.inference_mode():
        b = q(x)
    assert torch.equal(a, b)
    assert q(torch.empty(0, 32)).shape == (0, 8)


def test_nan_weights_rejected_with_layer_name():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="encoder.fc.*NaN"):
        Int8Linear.from_float(lin, name="encoder.fc")


def test_constructor_and_forward_errors():
    with pytest.raises(ValueError, match="act must be one of"):
        Int8Linear(4, 4, act="fp8")
    q = Int8Linear.from_float(nn.Linear(16, 4))
    with pytest.raises((ValueError, RuntimeError), match="K=15"):
        q(torch.randn(2, 15))


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("act", ["dynamic", "static", "weight_only"])
def test_torch_compile_fullgraph_matches_eager(act):
    model = TwoLayer()
    cal = randn_nonzero(16, 48)
    co.convert(model, co.Int8(act=act), calibration_data=cal)
    x = randn_nonzero(5, 48)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    if act == "weight_only":
        torch.testing.assert_close(out, eager)
    else:
        assert torch.equal(out, eager)


def test_torch_export_matches_eager():
    model = co.convert(TwoLayer(), co.Int8())
    x = randn_nonzero(3, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("compressops.int8_linear" in t for t in targets)
    x2 = randn_nonzero(7, 48)
    assert torch.equal(ep.module()(x2), model(x2))
