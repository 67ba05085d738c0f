"""Sparse24Linear / CSRLinear modules, convert, save/load, compile/export, and the pruning helpers."""

import copy
import io

import pytest
import torch
from torch import nn

import compressops as co
from compressops.algorithms import pruning
from compressops.formats import csr as csr_format
from compressops.formats import sparse24 as s24
from compressops.nn import CSRLinear, Sparse24Linear

from .helpers import randn_nonzero

CONFIGS = [co.Sparse24(), co.Sparse24(dtype=torch.bfloat16), co.Sparse24(dtype=torch.int8),
           co.CSR(sparsity=0.7), co.CSR(), co.CSR(sparsity=0.5, dtype="bfloat16")]
IDS = ["24_f32", "24_bf16", "24_int8", "csr70", "csr_keep", "csr50_bf16"]


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 37)
        self.fc2 = nn.Linear(37, 10, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def convert_one(lin, cfg):
    return (Sparse24Linear if isinstance(cfg, co.Sparse24) else CSRLinear).from_float(lin, cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_matches_dequantized_dense(cfg):
    lin = nn.Linear(67, 29)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(29, 67) > 0.3)  # some existing zeros for CSR()
    sp = convert_one(lin, cfg)
    x = randn_nonzero(2, 3, 67)
    y = sp(x)
    dense = nn.functional.linear(x, sp.dequantize(), sp.bias)
    tol = 2e-2 if (getattr(cfg, "dtype", None) == "int8") else 1e-5
    assert y.shape == (2, 3, 29)
    assert float((y - dense).norm() / dense.norm()) < tol
    ref = sp.to_float()
    assert isinstance(ref, nn.Linear) and torch.equal(ref.weight, sp.dequantize())
    assert sp.compressed_bytes() > 0 and sp.dense_bytes() == 4 * (29 * 67 + 29)
    assert "in_features=67" in repr(sp) and sp.shape_label == "29x67"
    assert sp.config.to_dict()["format"] in ("sparse24", "csr")


def test_sparse24_pruning_pattern_and_existing_pattern_kept():
    lin = nn.Linear(64, 16)
    sp = Sparse24Linear.from_float(lin)
    w = sp.dequantize()
    assert ((w.view(16, 16, 4) != 0).sum(-1) <= 2).all()
    assert torch.equal(w, lin.weight.detach() * s24.mask_24(lin.weight))
    lin2 = nn.Linear(64, 16)
    with torch.no_grad():
        lin2.weight.copy_(w)
    assert torch.equal(Sparse24Linear.from_float(lin2).dequantize(), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_sparse24_memory_holds_the_pack_only(dtype):
    sp = Sparse24Linear.from_float(nn.Linear(67, 29), co.Sparse24(dtype=dtype))
    extra = {"weight_scale"} if dtype == torch.int8 else set()
    assert {n for n, _ in sp.named_buffers()} == {"weight_packed", "bias"} | extra
    for t in (sp.values, sp.meta):  # views into the pack
        assert t.untyped_storage().data_ptr() == sp.weight_packed.untyped_storage().data_ptr()
    assert sp.values.dtype == dtype and sp.values.shape == (29, 34) and sp.meta.shape == (29, 9)
    assert sp.weight_packed.shape == (29, -(-s24.packed_bytes(29, 67, dtype) // 29))
    assert sp.compressed_bytes() == 29 * 34 * dtype.itemsize + 29 * 9 + 4 * 29 * (2 if dtype == torch.int8 else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_sparse24_state_dict_is_canonical_and_round_trips(dtype):
    sp = Sparse24Linear.from_float(nn.Linear(37, 10), co.Sparse24(dtype=dtype))
    sd = sp.state_dict()
    assert list(sd) == ["values", "meta"] + (["weight_scale"] if dtype == torch.int8 else []) + ["bias"]
    assert sd["values"].dtype == dtype and sd["values"].shape == (10, 20)  # Kp = 40
    assert sd["meta"].dtype == torch.uint8 and sd["meta"].shape == (10, 5)  # 10 groups, 2 a byte
    assert sd["values"].untyped_storage().data_ptr() == sp.weight_packed.untyped_storage().data_ptr()
    assert torch.equal(sd["meta"], sp.meta)  # a copy: torch.save takes one dtype per storage
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = Sparse24Linear(37, 10, dtype=dtype)
    result = fresh.load_state_dict(torch.load(buf))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.weight_packed, sp.weight_packed)
    x = randn_nonzero(3, 37)
    assert torch.equal(fresh(x), sp(x))
    # the skeleton holds the zero pack, the pack of the all-zero weight: it computes the bias
    skeleton = Sparse24Linear(37, 10, dtype=dtype)
    assert torch.equal(skeleton.weight_packed, s24.zero_pack(10, 37, dtype))
    assert torch.equal(skeleton(x), skeleton.bias.expand(3, 10))


def test_sparse24_load_state_dict_errors():
    good = Sparse24Linear.from_float(nn.Linear(16, 8)).state_dict()
    q = Sparse24Linear(16, 8)
    with pytest.raises(RuntimeError, match="Missing key.*values"):
        q.load_state_dict({k: v for k, v in good.items() if k != "values"})
    with pytest.raises(RuntimeError, match="Missing key.*meta"):
        q.load_state_dict({k: v for k, v in good.items() if k != "meta"})
    with pytest.raises(RuntimeError, match=r"mismatch for values: .*torch.float64 \(8, 8\), Sparse24Linear needs "
                                           r"torch.float32 \(8, 8\)"):
        q.load_state_dict({**good, "values": good["values"].double()})
    with pytest.raises(RuntimeError, match="mismatch for values"):
        q.load_state_dict({**good, "values": good["values"].bfloat16()})
    with pytest.raises(RuntimeError, match=r"mismatch for meta: .*Sparse24Linear needs torch.uint8 \(8, 2\)"):
        q.load_state_dict({**good, "meta": good["meta"][:4]})
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_packed"):
        q.load_state_dict({**good, "weight_packed": q.weight_packed})
    result = q.load_state_dict({k: v for k, v in good.items() if k != "meta"}, strict=False)
    assert result.missing_keys == ["meta"]


def test_csr_sparsity_and_keep_zeros():
    lin = nn.Linear(100, 50)
    sp = CSRLinear.from_float(lin, co.CSR(sparsity=0.9))
    assert abs(sp.sparsity - 0.9) < 0.01
    with torch.no_grad():
        lin.weight.mul_(torch.rand(50, 100) > 0.8)
    keep = CSRLinear.from_float(lin, co.CSR())
    assert torch.equal(keep.dequantize(), lin.weight.detach())


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_state_dict_and_save_load_round_trip(cfg, tmp_path):
    model = TwoLayer()
    conv = co.convert(copy.deepcopy(model), cfg)
    x = randn_nonzero(4, 48)
    expected = conv(x)
    other = co.convert(copy.deepcopy(model), cfg)
    other.load_state_dict(conv.state_dict())
    assert torch.equal(other(x), expected)
    assert all("packed" not in k for k in conv.state_dict())
    path = tmp_path / "m.safetensors"
    co.save(conv, path)
    loaded = co.load(TwoLayer(), path)
    assert type(loaded.fc1) is type(conv.fc1)
    assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("k, col_bytes", [(67, 2), (65536, 2), (65537, 4)])
def test_csr_stores_columns_once_and_narrow(k, col_bytes):
    n = 3
    lin = nn.Linear(k, n)
    cs = CSRLinear.from_float(lin, co.CSR(sparsity=0.5))
    sd = cs.state_dict()
    assert set(sd) == {"index", "values", "bias"}
    assert sd["index"].dtype == torch.uint8
    assert csr_format.read_header(sd["index"], "t")["col_bytes"] == col_bytes
    nnz = cs.nnz
    expected = 64 + 8 * (n + 1) + (col_bytes * nnz + 7) // 8 * 8 + 4 * nnz + 4 * n
    assert cs.compressed_bytes() == expected
    if k == 65536:  # fp32 values + 16-bit columns at 50%: 3 bytes a weight against 4 (the header is noise)
        assert cs.compressed_bytes() < 0.76 * cs.dense_bytes()
    # crow/col decode the canonical form, and the dense weight is the pruned one
    w = lin.weight.detach() * csr_format.magnitude_mask(lin.weight, 0.5)
    assert cs.col.dtype == torch.int32 and cs.crow.dtype == torch.int64
    assert torch.equal(csr_format.to_dense(cs.crow, cs.col, cs.values, k), w)
    assert torch.equal(cs.dequantize(), w)


def test_csr_loads_version_1_state_dict():
    lin = nn.Linear(50, 20)
    cs = CSRLinear.from_float(lin, co.CSR(sparsity=0.8))
    x = randn_nonzero(5, 50)
    # what version 1 wrote: canonical crow/col with int32 columns
    old = {"crow": cs.crow, "col": cs.col, "values": cs.values.clone(), "bias": cs.bias.clone()}
    fresh = CSRLinear(50, 20)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.index, cs.index) and torch.equal(fresh(x), cs(x))
    assert set(fresh.state_dict()) == {"index", "values", "bias"}
    with pytest.raises(ValueError, match=r"version 1\): col values must lie in"):
        CSRLinear(50, 20).load_state_dict({**old, "col": old["col"] + 50})
    with pytest.raises(ValueError, match="col must be a 1-D int32"):
        CSRLinear(50, 20).load_state_dict({**old, "col": old["col"].long()})


def test_csr_load_rejects_corrupt_index():
    cs = CSRLinear.from_float(nn.Linear(40, 6), co.CSR(sparsity=0.5))
    good = cs.state_dict()
    h = csr_format.read_header(good["index"], "t")
    col_off = csr_format.HEADER_BYTES + 8 * (h["n"] + 1)

    def load(sd):
        CSRLinear(40, 6).load_state_dict(sd)

    bad_col = {k: v.clone() for k, v in good.items()}
    bad_col["index"][col_off:col_off + 2] = torch.tensor([200], dtype=torch.int16).view(torch.uint8)  # col 200 >= 40
    with pytest.raises(ValueError, match="col values must lie in"):
        load(bad_col)
    bad_row = {k: v.clone() for k, v in good.items()}
    bad_row["index"][csr_format.HEADER_BYTES + 8:csr_format.HEADER_BYTES + 16] = torch.tensor(
        [10**6], dtype=torch.int64).view(torch.uint8)
    with pytest.raises(ValueError, match="crow must"):
        load(bad_row)
    with pytest.raises(ValueError, match="bytes but its header needs"):
        load({**good, "index": good["index"][:-8]})
    with pytest.raises(ValueError, match="values has"):
        load({**good, "values": good["values"][:-1]})
    with pytest.raises(ValueError, match=r"\[6, 41\] weight"):
        CSRLinear(40, 6).load_state_dict(CSRLinear.from_float(nn.Linear(41, 6), co.CSR(sparsity=0.5)).state_dict())
    assert torch.equal(CSRLinear(40, 6, nnz=3)(torch.ones(2, 40)), torch.zeros(2, 6))  # placeholder: bias only


def test_no_grad_inference_mode_empty_batch_bf16_input_and_to():
    sp = Sparse24Linear.from_float(nn.Linear(32, 8))
    cs = CSRLinear.from_float(nn.Linear(32, 8), co.CSR(sparsity=0.5))
    for m in (sp, cs):
        with torch.no_grad():
            assert m(randn_nonzero(0, 32)).shape == (0, 8)
        with torch.inference_mode():
            y = m(randn_nonzero(3, 32, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16
        m.to(torch.bfloat16)  # the format keeps its dtypes
        assert m.values.dtype == torch.float32 and m.bias.dtype == torch.float32


def test_nan_weights_and_constructor_errors():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        co.convert(nn.Sequential(lin), co.Sparse24())
    with pytest.raises(ValueError, match="NaN"):
        co.convert(nn.Sequential(lin), co.CSR())
    with pytest.raises(ValueError, match="in_features"):
        Sparse24Linear(0, 4)
    with pytest.raises(ValueError, match="dtype"):
        Sparse24Linear(8, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="sparsity"):
        co.CSR(sparsity=1.5)
    with pytest.raises(ValueError, match="scope"):
        co.CSR(scope="model")
    with pytest.raises(ValueError, match="dtype"):
        co.Sparse24(dtype=torch.float16)
    with pytest.raises(TypeError, match="nn.Linear"):
        Sparse24Linear.from_float(nn.Conv2d(3, 3, 1))
    sp = Sparse24Linear.from_float(nn.Linear(8, 4))
    with pytest.raises((RuntimeError, ValueError), match="K=7"):
        sp(torch.randn(2, 7))


def test_convert_mapping_and_report():
    model = TwoLayer()
    conv = co.convert(model, {"fc1": co.Sparse24(dtype=torch.int8), "fc2": co.CSR(sparsity=0.8)}, inplace=False)
    assert isinstance(conv.fc1, Sparse24Linear) and isinstance(conv.fc2, CSRLinear)
    text = str(co.report(conv))
    assert "2:4 int8" in text and "CSR 80%" in text


def test_csr_global_scope_one_threshold():
    model = TwoLayer()
    with torch.no_grad():
        model.fc2.weight.mul_(0.1)  # smaller weights -> pruned harder under one global threshold
    conv = co.convert(model, co.CSR(sparsity=0.6, scope="global"), inplace=False)
    total = conv.fc1.nnz + conv.fc2.nnz
    assert abs(1 - total / (48 * 37 + 37 * 10) - 0.6) < 0.01
    assert conv.fc2.sparsity > conv.fc1.sparsity
    pruned = copy.deepcopy(model)
    pruning.global_magnitude_prune(pruned, 0.6)
    conv2 = co.convert(pruned, co.CSR())
    assert torch.equal(conv2.fc1.dequantize(), conv.fc1.dequantize())


@pytest.mark.parametrize("cfg", [co.Sparse24(), co.Sparse24(dtype=torch.int8), co.CSR(sparsity=0.7)],
                         ids=["24", "24_int8", "csr"])
def test_torch_compile_fullgraph_matches_eager(cfg):
    model = co.convert(TwoLayer(), cfg)
    x = randn_nonzero(5, 48)
    eager = model(x)
    out = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(out, eager)


def test_torch_export_matches_eager():
    model = co.convert(TwoLayer(), {"fc1": co.Sparse24(), "fc2": co.CSR(sparsity=0.5)})
    x = randn_nonzero(3, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("sparse24_linear" in t for t in targets) and any("csr_linear" in t for t in targets)
    x2 = randn_nonzero(7, 48)
    torch.testing.assert_close(ep.module()(x2), model(x2))


# ------------------------------------------------------------------------------------- pruning

def test_nm_and_magnitude_masks():
    w = randn_nonzero(6, 19)
    m = pruning.nm_mask(w, 2, 4)
    assert torch.equal(m, s24.mask_24(w))
    m13 = pruning.nm_mask(w, 1, 3)
    assert (torch.nn.functional.pad(m13.int(), (0, 2)).view(6, 7, 3).sum(-1) <= 1).all()
    mm = pruning.magnitude_mask(w, 0.75)
    assert abs(1 - mm.float().mean().item() - 0.75) < 0.02
    assert w[~mm].abs().max() <= w[mm].abs().min()


def test_cubic_schedule():
    assert pruning.cubic_sparsity(0, 0.9, 0, 100) == 0.0
    assert pruning.cubic_sparsity(100, 0.9, 0, 100) == 0.9
    mid = pruning.cubic_sparsity(50, 0.9, 0, 100)
    assert 0.9 * 0.8 < mid < 0.9  # cubic: most of the pruning early


@pytest.mark.parametrize("kind", ["unstructured", "2:4", "global"])
def test_pruner_masks_hold_through_optimizer_steps(kind):
    torch.manual_seed(0)
    model = TwoLayer()
    if kind == "2:4":
        pruner = pruning.MagnitudePruner(model, pattern="2:4", begin=0, end=10, every=5)
    else:
        pruner = pruning.MagnitudePruner(model, sparsity=0.8, scope="global" if kind == "global" else "layer",
                                         begin=0, end=10, every=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(12):
        loss = model(randn_nonzero(8, 48)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        pruner.step()
        for name, mod in pruner.layers:
            assert (mod.weight[~pruner.masks[name]] == 0).all()
    pruner.remove()
    if kind == "2:4":
        conv = co.convert(copy.deepcopy(model), co.Sparse24())
        assert torch.equal(conv.fc1.dequantize(), model.fc1.weight.detach())
    else:
        total = sum(int((m.weight == 0).sum()) for _, m in pruner.layers)
        assert total / (48 * 37 + 37 * 10) >= 0.79
        conv = co.convert(copy.deepcopy(model), co.CSR())
        assert torch.equal(conv.fc1.dequantize(), model.fc1.weight.detach())


def test_benchmark_module_imports_and_break_even():
    from compressops.bench import sparse as bench

    rows = [{"shape": "s", "threads": 1, "impl": "CSRLinear 90%", "speedup": 2.0},
            {"shape": "s", "threads": 1, "impl": "CSRLinear 70%", "speedup": 1.1},
            {"shape": "s", "threads": 1, "impl": "CSRLinear 50%", "speedup": 0.6}]
    assert bench.break_even(rows, "s", 1) == "<= 70%"
    assert bench.break_even(rows[2:], "s", 1) == "> measured range"
