"""Int8Linear: accuracy against the float layer, state_dict, compile/export, dtypes, errors."""

import io

import pytest
import torch
from torch import nn

import compressops as co
from compressops import ops, reference
from compressops.formats import int8 as f8
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
    assert torch.equal(y, reference.int8_linear(x, q.weight_packed, q.weight_scale, q.bias, act_scale=q.act_scale))
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


def test_state_dict_round_trip():
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


@pytest.mark.parametrize("act", ["dynamic", "static", "weight_only"])
def test_memory_holds_only_the_pack(act):
    lin = nn.Linear(67, 33)
    q = Int8Linear.from_float(lin, co.Int8(act=act), act_scale=torch.tensor(0.02))
    extra = {"act_scale"} if act == "static" else set()
    assert {n for n, b in q.named_buffers() if b is not None} == {"weight_packed", "weight_scale", "bias"} | extra
    w_q, scale = f8.quantize_weight(lin.weight)
    assert torch.equal(q.weight, w_q) and torch.equal(q.weight_scale, scale)
    assert torch.equal(q.weight_packed, ops.int8_pack_weight(w_q))
    assert q.weight_packed.shape == (33, -(-f8.packed_bytes(33, 67) // 33))
    assert q.compressed_bytes() == 67 * 33 + 4 * 33 + 4 * 33 + (4 if act == "static" else 0)
    assert q.dense_bytes() == 4 * 67 * 33 + 4 * 33


@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_state_dict_holds_the_canonical_format(act):
    lin = nn.Linear(100, 40)
    q = Int8Linear.from_float(lin, co.Int8(act=act), act_scale=torch.tensor(0.05))
    sd = q.state_dict()
    assert list(sd) == ["weight", "weight_scale", "bias"] + (["act_scale"] if act == "static" else [])
    assert sd["weight"].dtype == torch.int8 and sd["weight"].shape == (40, 100)
    assert sd["weight_scale"].dtype == torch.float32 and sd["weight_scale"].shape == (40,)
    assert torch.equal(sd["weight"], f8.quantize_weight(lin.weight)[0])
    fresh = Int8Linear(100, 40, act=act)
    result = fresh.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.weight_packed, q.weight_packed)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))


def test_skeleton_does_not_pack_and_load_packs_once(monkeypatch):
    """A skeleton holds the zero pack without running the pack op; load_state_dict packs once."""
    good = Int8Linear.from_float(nn.Linear(48, 20)).state_dict()
    calls = []
    real = ops.int8_pack_weight

    def counting(w_q):
        calls.append(tuple(w_q.shape))
        return real(w_q)

    monkeypatch.setattr(ops, "int8_pack_weight", counting)
    q = Int8Linear(48, 20)
    assert calls == []
    assert torch.equal(q.weight_packed, f8.zero_pack(20, 48)) and not q.weight.any()
    q.load_state_dict(good)
    assert calls == [(20, 48)]
    assert torch.equal(q.weight, good["weight"])


def test_load_state_dict_errors():
    q = Int8Linear(16, 8)
    good = Int8Linear.from_float(nn.Linear(16, 8)).state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*weight"):
        q.load_state_dict({k: v for k, v in good.items() if k != "weight"})
    with pytest.raises(RuntimeError, match=r"weight: the checkpoint holds torch.float32 \(8, 16\), "
                                           r"Int8Linear needs torch.int8 \(8, 16\)"):
        q.load_state_dict({**good, "weight": good["weight"].float()})
    with pytest.raises(RuntimeError, match="needs torch.int8"):
        q.load_state_dict({**good, "weight": good["weight"][:4]})
    bad = good["weight"].clone()
    bad[3, 5] = -128
    with pytest.raises(RuntimeError, match=r"mismatch for weight: the checkpoint holds -128"):
        q.load_state_dict({**good, "weight": bad})
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_packed"):
        q.load_state_dict({**good, "weight_packed": q.weight_packed})
    missing = q.load_state_dict({k: v for k, v in good.items() if k != "weight"}, strict=False)
    assert missing.missing_keys == ["weight"]


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
