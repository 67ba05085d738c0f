"""HalfLinear: accuracy against the float layer, one copy of the weight, state_dict, compile/export, convert."""

import io

import pytest
import torch
from torch import nn

import compressops as co
from compressops import reference
from compressops.formats import half as fh
from compressops.nn import HalfLinear

from .helpers import randn_nonzero


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_from_float_rounds_the_weight_and_keeps_the_bias(bias):
    lin = nn.Linear(203, 77, bias=bias)
    q = HalfLinear.from_float(lin)
    assert torch.equal(q.weight, lin.weight.detach().half())
    assert (q.bias is None) == (not bias)
    if bias:
        assert q.bias.dtype == torch.float32 and torch.equal(q.bias, lin.bias.detach())
    x = randn_nonzero(3, 5, 203)
    y = q(x)
    with torch.no_grad():
        ref = lin(x)
        y_half_weights = x @ lin.weight.half().float().t() + (lin.bias if bias else 0)
    assert y.shape == ref.shape and y.dtype == torch.float32
    # float16 keeps 11 significant bits: about 2^-12 relative error per weight, less in the sums
    assert rel_err(y, ref) < 1e-3
    assert rel_err(y, y_half_weights) < 1e-6


def test_memory_holds_one_copy_of_the_weight():
    q = HalfLinear.from_float(nn.Linear(64, 32))
    assert {n for n, _ in q.named_buffers()} == {"weight_packed", "bias"}
    assert q.weight.untyped_storage().data_ptr() == q.weight_packed.untyped_storage().data_ptr()
    assert q.weight_packed.shape == (32, -(-fh.packed_bytes(32, 64) // 32))
    assert q.compressed_bytes() == 2 * 64 * 32 + 4 * 32
    assert q.dense_bytes() == 4 * 64 * 32 + 4 * 32


def test_state_dict_holds_the_canonical_format_and_round_trips():
    lin = nn.Linear(100, 40)
    q = HalfLinear.from_float(lin)
    sd = q.state_dict()
    assert list(sd) == ["weight", "bias"]
    assert sd["weight"].dtype == torch.float16 and sd["weight"].shape == (40, 100)
    buf = io.BytesIO()
    torch.save(sd, buf)
    fresh = HalfLinear(100, 40)
    buf.seek(0)
    result = fresh.load_state_dict(torch.load(buf))
    assert not result.missing_keys and not result.unexpected_keys
    x = randn_nonzero(6, 100)
    assert torch.equal(fresh(x), q(x))
    assert torch.equal(fresh.weight_packed, q.weight_packed)


def test_load_state_dict_errors():
    q = HalfLinear(16, 8)
    good = HalfLinear.from_float(nn.Linear(16, 8)).state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*weight"):
        q.load_state_dict({"bias": good["bias"]})
    with pytest.raises(RuntimeError, match="needs torch.float16 \\(8, 16\\)"):
        q.load_state_dict({**good, "weight": good["weight"].float()})
    with pytest.raises(RuntimeError, match="needs torch.float16"):
        q.load_state_dict({**good, "weight": good["weight"][:4]})
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_packed"):
        q.load_state_dict({**good, "weight_packed": q.weight_packed})
    missing = q.load_state_dict({"bias": good["bias"]}, strict=False)
    assert missing.missing_keys == ["weight"]


def test_module_dtype_casts_leave_the_format_alone():
    q = HalfLinear.from_float(nn.Linear(128, 48))
    packed, bias = q.weight_packed.clone(), q.bias.clone()
    x = randn_nonzero(4, 128)
    y32 = q(x)
    q.to(torch.bfloat16)
    q.double()
    assert torch.equal(q.weight_packed, packed) and q.bias.dtype == torch.float32 and torch.equal(q.bias, bias)
    assert torch.equal(q(x), y32)
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and rel_err(yb, y32) < 1e-2


def test_to_float_dequantize_config_and_repr():
    lin = nn.Linear(50, 20)
    q = HalfLinear.from_float(lin)
    back = q.to_float()
    assert isinstance(back, nn.Linear) and back.weight.dtype == torch.float32
    assert torch.equal(back.weight.detach(), lin.weight.detach().half().float())
    assert torch.equal(q.dequantize(), back.weight.detach())
    assert q.config == co.Half() and q.format_label == "float16"
    assert co.configs.Config.from_dict(co.Half().to_dict()) == co.Half()
    assert co.Half().to_dict() == {"format": "half"}
    r = repr(q)
    assert "in_features=50" in r and "out_features=20" in r and "weight=float16" in r


def test_bad_weights_and_modules():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        HalfLinear.from_float(lin, name="layer3")
    with torch.no_grad():
        lin.weight[0, 0] = 1e6
    with pytest.raises(ValueError, match="exceed float16's range"):
        HalfLinear.from_float(lin)
    with pytest.raises(TypeError, match="expected nn.Linear"):
        HalfLinear.from_float(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=">= 1"):
        HalfLinear(0, 4)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_convert_report_and_out_of_range_layer_left_dense():
    model = TwoLayer()
    with torch.no_grad():
        model.fc2.weight[3, 1] = 7e4
    co.convert(model, co.Half())
    assert isinstance(model.fc1, HalfLinear) and isinstance(model.fc2, nn.Linear)
    rows = {r.name: r for r in co.report(model).rows}
    assert rows["fc1"].format == "float16"
    assert rows["fc2"].format == "dense" and "float16's range" in rows["fc2"].note


def test_save_load_round_trip(tmp_path):
    model = co.convert(TwoLayer(), co.Half())
    path = tmp_path / "m.safetensors"
    co.save(model, str(path))
    loaded = co.load(TwoLayer(), str(path))
    assert isinstance(loaded.fc1, HalfLinear) and isinstance(loaded.fc2, HalfLinear)
    x = randn_nonzero(5, 48)
    assert torch.equal(loaded(x), model(x))


def test_torch_compile_fullgraph_matches_eager():
    model = co.convert(TwoLayer(), co.Half())
    x = randn_nonzero(5, 48)
    assert torch.equal(torch.compile(model, fullgraph=True)(x), model(x))


def test_torch_export_matches_eager():
    model = co.convert(TwoLayer(), co.Half())
    x = randn_nonzero(3, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("compressops.half_linear" in t for t in targets)
    x2 = randn_nonzero(7, 48)
    assert torch.equal(ep.module()(x2), model(x2))


def test_forward_is_the_op_and_matches_the_reference_bound():
    q = HalfLinear.from_float(nn.Linear(300, 70))
    x = randn_nonzero(9, 300)
    y, y_ref = q(x), reference.half_linear(x, q.weight_packed, q.bias)
    assert ((y.double() - y_ref.double()).abs() <= 2 * fh.error_bound(x, q.weight, q.bias)).all()
