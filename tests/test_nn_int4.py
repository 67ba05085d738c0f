"""Int4Linear: accuracy, state_dict, save/load, compile/export, convert/report, GPTQ, GPTQ import."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import compressops as co
from compressops import ops
from compressops.algorithms.gptq import HessianObserver, gptq_quantize
from compressops.formats import int4 as f4
from compressops.nn import Int4Linear

from .helpers import randn_nonzero


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_from_float_close_to_dequantized_and_float(group_size, symmetric, bias):
    lin = nn.Linear(203, 77, bias=bias)
    q = Int4Linear.from_float(lin, co.Int4(group_size=group_size, symmetric=symmetric))
    x = randn_nonzero(3, 5, 203)
    with torch.no_grad():
        ref = lin(x)
        dense = q.to_float()(x)
    y = q(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert rel_err(y, dense) < 0.02          # W4A8 vs the dequantized weight in fp32
    assert rel_err(y, ref) < 0.15            # 4-bit weights on uniform-init weights
    assert q.qweight.shape == (77, f4.padded_k(203, group_size) // 2)


def test_bf16_input_and_module_to_bf16_keep_fp32_scales():
    q = Int4Linear.from_float(nn.Linear(128, 48), co.Int4(group_size=64))
    x = randn_nonzero(4, 128)
    y32 = q(x)
    before = q.scales.clone()
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float32 and torch.equal(q.scales, before)
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert rel_err(yb, y32) < 0.02


def test_state_dict_round_trip():
    q = Int4Linear.from_float(nn.Linear(100, 40), co.Int4(group_size=32))
    sd = q.state_dict()
    assert list(sd) == ["qweight", "scales", "zeros", "bias"]
    assert (sd["qweight"].dtype, sd["qweight"].shape) == (torch.uint8, (40, 64))
    assert (sd["scales"].dtype, sd["scales"].shape) == (torch.float32, (40, 4))
    assert (sd["zeros"].dtype, sd["zeros"].shape) == (torch.uint8, (40, 4))
    buf = io.BytesIO()
    torch.save(sd, buf)
    fresh = Int4Linear(100, 40, group_size=32)
    buf.seek(0)
    result = fresh.load_state_dict(torch.load(buf))
    assert not result.missing_keys and not result.unexpected_keys
    x = randn_nonzero(6, 100)
    assert torch.equal(fresh(x), q(x))
    assert torch.equal(fresh.weight_packed, q.weight_packed)
    sym = Int4Linear.from_float(nn.Linear(100, 40, bias=False), co.Int4(group_size=64, symmetric=True))
    assert list(sym.state_dict()) == ["qweight", "scales"]
    fresh_sym = Int4Linear(100, 40, bias=False, group_size=64, symmetric=True)
    fresh_sym.load_state_dict(sym.state_dict())
    assert torch.equal(fresh_sym.weight_packed, sym.weight_packed)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_memory_holds_the_pack_only_and_the_canonical_tensors_come_back_exactly(symmetric):
    lin = nn.Linear(203, 77)
    qw, s, z = f4.quantize_weight(lin.weight, 64, symmetric)
    q = Int4Linear.from_float(lin, co.Int4(group_size=64, symmetric=symmetric))
    assert {n for n, _ in q.named_buffers()} == {"weight_packed", "bias"}
    assert torch.equal(q.weight_packed, ops.int4_pack_weight(qw, s, z, 203, 64))
    assert torch.equal(q.qweight, qw) and torch.equal(q.scales.view(torch.int32), s.view(torch.int32))
    assert q.zeros is None if symmetric else torch.equal(q.zeros, z)
    sd = q.state_dict()
    assert torch.equal(sd["qweight"], qw) and torch.equal(sd["scales"], s)
    # the canonical tensors are new ones: writing to them leaves the layer alone
    packed = q.weight_packed.clone()
    q.qweight.zero_()
    q.scales.zero_()
    assert torch.equal(q.weight_packed, packed)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_skeleton_holds_the_zero_pack(symmetric):
    q = Int4Linear(70, 13, group_size=32, symmetric=symmetric)
    assert torch.equal(q.weight_packed, f4.zero_pack(13, 70, 32, symmetric))
    assert torch.equal(q.dequantize(), torch.zeros(13, 70))
    assert torch.equal(q(randn_nonzero(2, 70)), q.bias.expand(2, 13))


def test_load_state_dict_errors():
    q = Int4Linear(64, 8, group_size=32)
    good = Int4Linear.from_float(nn.Linear(64, 8), co.Int4(group_size=32)).state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*qweight"):
        q.load_state_dict({k: v for k, v in good.items() if k != "qweight"})
    with pytest.raises(RuntimeError, match="Missing key.*zeros"):
        q.load_state_dict({k: v for k, v in good.items() if k != "zeros"})
    with pytest.raises(RuntimeError, match=r"mismatch for qweight: .* needs torch.uint8 \(8, 32\)"):
        q.load_state_dict({**good, "qweight": good["qweight"].to(torch.int8)})
    with pytest.raises(RuntimeError, match=r"mismatch for scales: .* needs torch.float32 \(8, 2\)"):
        q.load_state_dict({**good, "scales": good["scales"][:, :1]})
    with pytest.raises(RuntimeError, match=r"mismatch for scales: .*float16"):
        q.load_state_dict({**good, "scales": good["scales"].half()})
    with pytest.raises(RuntimeError, match=r"mismatch for zeros: zero points must lie in \[0, 15\]"):
        q.load_state_dict({**good, "zeros": torch.full_like(good["zeros"], 16)})
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_packed"):
        q.load_state_dict({**good, "weight_packed": q.weight_packed})
    sym = Int4Linear(64, 8, group_size=32, symmetric=True)
    with pytest.raises(RuntimeError, match="Unexpected key.*zeros"):
        sym.load_state_dict(good)
    before = q.weight_packed.clone()
    result = q.load_state_dict({"bias": good["bias"]}, strict=False)
    assert sorted(result.missing_keys) == ["qweight", "scales", "zeros"]
    assert torch.equal(q.weight_packed, before)  # nothing half loaded
    q.load_state_dict(good)
    assert torch.equal(q.qweight, good["qweight"])


def test_copies_move_the_pack_only():
    q = Int4Linear.from_float(nn.Linear(64, 24), co.Int4(group_size=32))
    x = randn_nonzero(3, 64)
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q)), q.to("cpu")):
        assert {n for n, _ in other.named_buffers()} == {"weight_packed", "bias"}
        assert torch.equal(other(x), q(x))


def test_to_float_dequantize_bytes_and_repr():
    lin = nn.Linear(256, 20)
    q = Int4Linear.from_float(lin, co.Int4(group_size=128))
    back = q.to_float()
    assert isinstance(back, nn.Linear)
    assert torch.equal(back.weight.detach(), q.dequantize())
    assert rel_err(back.weight, lin.weight) < 0.13
    assert q.dense_bytes() == 4 * (256 * 20 + 20)
    assert q.compressed_bytes() == 20 * 128 + 20 * 2 * 4 + 20 * 2 + 20 * 4
    r = repr(q)
    assert "int4" in r and "group_size=128" in r and "asymmetric" in r and "in_features=256" in r
    assert q.format_label == "int4 g128 asym (rtn)" and q.shape_label == "20x256"


def test_no_grad_inference_mode_and_empty_batch():
    q = Int4Linear.from_float(nn.Linear(32, 8), co.Int4(group_size=32))
    x = randn_nonzero(2, 32)
    with torch.no_grad():
        a = q(x)
    with torch.inference_mode():
        b = q(x)
    assert torch.equal(a, b)
    assert q(torch.empty(0, 32)).shape == (0, 8)


def test_errors():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="encoder.fc.*NaN"):
        Int4Linear.from_float(lin, co.Int4(group_size=32), name="encoder.fc")
    with pytest.raises(ValueError, match="group_size"):
        co.Int4(group_size=100)
    with pytest.raises(ValueError, match="method"):
        co.Int4(method="awq")
    with pytest.raises(ValueError, match="calibration_data"):
        Int4Linear.from_float(nn.Linear(8, 4), co.Int4(group_size=32, method="gptq"))
    q = Int4Linear.from_float(nn.Linear(16, 4), co.Int4(group_size=32))
    with pytest.raises((ValueError, RuntimeError), match="K=15"):
        q(torch.randn(2, 15))


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_torch_compile_fullgraph_matches_eager():
    model = co.convert(TwoLayer(), co.Int4(group_size=32))
    x = randn_nonzero(5, 48)
    eager = model(x)
    out = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(out, eager)


def test_torch_export_matches_eager():
    model = co.convert(TwoLayer(), co.Int4(group_size=32))
    x = randn_nonzero(3, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("compressops.int4_linear" in t for t in targets)
    x2 = randn_nonzero(7, 48)
    assert torch.equal(ep.module()(x2), model(x2))


def test_convert_mapping_report_and_save_load(tmp_path):
    model = TwoLayer()
    co.convert(model, {"fc1": co.Int4(group_size=32, symmetric=True), "fc2": None})
    assert isinstance(model.fc1, Int4Linear) and isinstance(model.fc2, nn.Linear)
    rows = {r.name: r for r in co.report(model).rows}
    assert rows["fc1"].format == "int4 g32 sym (rtn)"
    assert rows["fc1"].bytes == model.fc1.compressed_bytes() and rows["fc1"].bytes < rows["fc1"].dense_bytes
    path = tmp_path / "m.safetensors"
    co.save(model, str(path))
    fresh = co.load(TwoLayer(), str(path))
    assert isinstance(fresh.fc1, Int4Linear) and fresh.fc1.config == co.Int4(group_size=32, symmetric=True)
    x = randn_nonzero(4, 48)
    assert torch.equal(fresh(x), model(x))
    assert co.Int4(group_size=64, method="gptq").to_dict() == {"format": "int4", "group_size": 64,
                                                               "symmetric": False, "method": "gptq",
                                                               "embeddings": False}


def _correlated_inputs(rows, k):
    mix = torch.randn(k, k) / k ** 0.5
    return randn_nonzero(rows, k) @ mix + 0.05 * torch.randn(rows, k)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_gptq_lowers_output_error_vs_rtn(symmetric):
    k, n, gs = 200, 48, 64  # K not a multiple of the group size
    w = torch.randn(n, k)
    x = _correlated_inputs(1024, k)
    obs = HessianObserver()
    obs.observe(x[:500])
    obs.observe(x[500:].reshape(4, -1, k))  # leading dims are flattened
    h = obs.result()
    assert h.dtype == torch.float64 and torch.allclose(h, x.double().t() @ x.double())
    rtn = f4.dequantize(*f4.quantize_weight(w, gs, symmetric), k, gs)
    qw, s, z = gptq_quantize(w, h, gs, symmetric)
    assert (z is None) == symmetric and qw.shape == (n, f4.padded_k(k, gs) // 2)
    g = f4.dequantize(qw, s, z, k, gs)
    ref = x @ w.t()
    assert rel_err(x @ g.t(), ref) < 0.85 * rel_err(x @ rtn.t(), ref)
    # padding columns hold the zero point
    codes = f4.unpack_nibbles(qw)
    assert (codes[:, k:] == (8 if symmetric else z[:, -1:])).all()


def test_gptq_through_convert_needs_calibration():
    model = TwoLayer()
    with pytest.raises(ValueError, match="calibration_data"):
        co.convert(model, co.Int4(group_size=32, method="gptq"), inplace=False)
    x = _correlated_inputs(256, 48)
    q = co.convert(model, co.Int4(group_size=32, method="gptq"), calibration_data=[x[:128], x[128:]], inplace=False)
    assert isinstance(q.fc1, Int4Linear) and q.fc1.method == "gptq"
    r = co.convert(model, co.Int4(group_size=32), inplace=False)
    ref = model(x)
    assert rel_err(q(x), ref) < rel_err(r(x), ref)
    with pytest.raises(ValueError, match="saw no data"):
        HessianObserver().result()


def _to_gptq_layout(codes, zeros_minus_one, scales16):
    """Build AutoGPTQ v1 tensors from codes [N, K] and stored zeros [N, G] (already z - 1)."""
    n, k = codes.shape
    c = codes.t().to(torch.int64).reshape(k // 8, 8, n)
    qweight = torch.zeros(k // 8, n, dtype=torch.int64)
    for i in range(8):
        qweight |= c[:, i, :] << (4 * i)
    zt = zeros_minus_one.t().to(torch.int64)  # [G, N]
    g = zt.shape[0]
    zt = torch.cat([zt, torch.zeros(g, (-n) % 8, dtype=torch.int64)], dim=1).reshape(g, -1, 8)
    qzeros = torch.zeros(g, zt.shape[1], dtype=torch.int64)
    for i in range(8):
        qzeros |= zt[:, :, i] << (4 * i)
    to_i32 = lambda t: torch.where(t >= 2 ** 31, t - 2 ** 32, t).to(torch.int32)  # noqa: E731
    return to_i32(qweight), to_i32(qzeros), scales16.t().contiguous()


def test_from_gptq_tensors_matches_known_weights():
    n, k, gs = 20, 256, 64
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    z = torch.randint(1, 16, (n, k // gs), dtype=torch.uint8)
    s = (torch.rand(n, k // gs) * 0.1 + 0.01).half()
    bias = torch.randn(n)
    expect = (codes.float().view(n, -1, gs) - z.float().unsqueeze(-1)) * s.float().unsqueeze(-1)
    expect = expect.reshape(n, k)
    qweight, qzeros, scales = _to_gptq_layout(codes, z - 1, s)
    assert qweight.shape == (k // 8, n) and qzeros.shape == (k // gs, 3) and scales.shape == (k // gs, n)
    mod = Int4Linear.from_gptq(qweight, scales, qzeros, bias=bias, group_size=gs)
    assert isinstance(mod, Int4Linear) and mod.in_features == k and mod.out_features == n
    assert torch.equal(mod.dequantize(), expect)
    x = randn_nonzero(3, k)
    assert rel_err(mod(x), x @ expect.t() + bias) < 0.02
    # checkpoints that store z itself
    qweight2, qzeros2, _ = _to_gptq_layout(codes, z, s)
    assert torch.equal(Int4Linear.from_gptq(qweight2, scales, qzeros2, group_size=gs, zero_offset=0).dequantize(),
                       expect)
    with pytest.raises(ValueError, match="qweight must be int32"):
        Int4Linear.from_gptq(qweight.float(), scales, qzeros, group_size=gs)


def test_bench_peers_compute_the_same_layer():
    """The benchmark's torch int4pack and onnxruntime rows run the same codes as Int4Linear."""
    from compressops.bench import int4_linear as bench

    lin = nn.Linear(256, 32)  # torch's int4pack needs N % 16 == 0
    q = Int4Linear.from_float(lin, co.Int4(group_size=128))
    x = randn_nonzero(3, 256)
    y = q(x)
    yt = bench._torch_int4(q)(x.bfloat16()).float()
    assert rel_err(yt, y) < 0.03
    sess, why = bench._ort_matmulnbits(q, 1)
    if sess is not None:
        yo = torch.from_numpy(sess.run(None, {"A": x.numpy()})[0])
        assert rel_err(yo, y) < 0.03
