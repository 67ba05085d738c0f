"""Sparse24Linear / CSRLinear modules, convert, save/load, compile/export, and the pruning helpers."""

import copy
import io
import struct

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
def test_csr_state_dict_is_canonical_and_memory_holds_the_pack_once(k, col_bytes):
    n = 3
    lin = nn.Linear(k, n)
    cs = CSRLinear.from_float(lin, co.CSR(sparsity=0.5))
    nnz = cs.nnz
    # memory: the pack (not persistent) and the values; no canonical copy of the columns
    assert {name for name, _ in cs.named_buffers()} == {"index", "values", "bias"}
    assert "index" in cs._non_persistent_buffers_set
    assert csr_format.read_header(cs.index, "t").col_bytes == col_bytes
    assert cs.index.shape == (n, -(-csr_format.packed_bytes(n, k, nnz) // n))
    # state_dict: the canonical format (formats/csr.py), columns in 16 bits when K <= 65536
    sd = cs.state_dict()
    assert list(sd) == ["crow", "col", "values", "bias"]
    assert sd["crow"].dtype == torch.int32 and sd["crow"].shape == (n + 1,)
    assert sd["col"].dtype == (torch.uint16 if k <= 65536 else torch.int32) and sd["col"].shape == (nnz,)
    assert cs.compressed_bytes() == 4 * (n + 1) + col_bytes * nnz + 4 * nnz + 4 * n
    assert cs.compressed_bytes() == sum(t.numel() * t.element_size() for t in sd.values())
    if k == 65536:  # fp32 values + 16-bit columns at 50%: 3 bytes a weight against 4
        assert cs.compressed_bytes() < 0.76 * cs.dense_bytes()
    # crow/col decode the pack, and the dense weight is the pruned one
    w = lin.weight.detach() * csr_format.magnitude_mask(lin.weight, 0.5)
    assert torch.equal(cs.crow, sd["crow"]) and torch.equal(cs.col, sd["col"])
    assert torch.equal(csr_format.to_dense(cs.crow, cs.col, cs.values, k), w)
    assert torch.equal(cs.dequantize(), w)


def test_csr_canonical_state_dict_round_trips_through_torch_save_and_safetensors(tmp_path):
    model = co.convert(TwoLayer(), co.CSR(sparsity=0.6))
    x = randn_nonzero(4, 48)
    sd = model.state_dict()
    assert sd["fc1.col"].dtype == torch.uint16
    torch.save(sd, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert loaded["fc1.col"].dtype == torch.uint16 and torch.equal(loaded["fc1.col"], sd["fc1.col"])
    other = co.convert(TwoLayer(), co.CSR(sparsity=0.6))
    other.load_state_dict(loaded)
    assert torch.equal(other(x), model(x))
    co.save(model, tmp_path / "m.safetensors")
    back = co.load(TwoLayer(), tmp_path / "m.safetensors")
    for key, t in back.state_dict().items():
        assert t.dtype == sd[key].dtype and torch.equal(t, sd[key]), key
    assert torch.equal(back.fc1.index, model.fc1.index) and torch.equal(back(x), model(x))


def test_csr_skeleton_builds_its_placeholder_without_the_pack_op(monkeypatch):
    from compressops.nn import sparse_linear

    def refuse(*args):
        raise AssertionError("csr_pack ran on placeholder data")

    monkeypatch.setattr(sparse_linear.ops, "csr_pack", refuse)
    empty, three = CSRLinear(40, 6), CSRLinear(40, 6, nnz=3)
    assert torch.equal(empty.index, csr_format.placeholder_pack(6, 40))
    assert torch.equal(empty(torch.ones(2, 40)), empty.bias.expand(2, 6))
    assert torch.equal(three(torch.ones(2, 40)), three.bias.expand(2, 6))  # placeholder: bias only
    skeleton = CSRLinear.skeleton(nn.Linear(40, 6), co.CSR())
    assert skeleton.nnz == 0 and skeleton.crow.tolist() == [0] * 7


@pytest.mark.parametrize("crow_dtype", [torch.int32, torch.int64])
def test_csr_loads_version_1_state_dict(crow_dtype):
    lin = nn.Linear(50, 20)
    cs = CSRLinear.from_float(lin, co.CSR(sparsity=0.8))
    x = randn_nonzero(5, 50)
    # what version 1 wrote: crow int32/int64 and int32 columns
    old = {"crow": cs.crow.to(crow_dtype), "col": cs.col.int(), "values": cs.values.clone(), "bias": cs.bias.clone()}
    fresh = CSRLinear(50, 20)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.index, cs.index) and torch.equal(fresh(x), cs(x))
    sd = fresh.state_dict()
    assert list(sd) == ["crow", "col", "values", "bias"] and sd["col"].dtype == torch.uint16
    with pytest.raises(ValueError, match=r"load_state_dict: col values must lie in \[0, in_features\) = \[0, 50\)"):
        CSRLinear(50, 20).load_state_dict({**old, "col": old["col"] + 50})
    with pytest.raises(ValueError, match="col must be a 1-D int32 or uint16"):
        CSRLinear(50, 20).load_state_dict({**old, "col": old["col"].long()})


def _version_2_index(crow, col, n, k):
    """The `index` compressops 0.1 stored (state_dict version 2), written here byte by byte."""
    cb = 2 if k <= 65536 else 4
    nnz = col.shape[0]
    header = struct.pack("<8i4q", 0x52534343, 1, n, k, cb, 1, 0, 0, nnz, 0, 0, 0)
    cols = struct.pack(f"<{nnz}{'H' if cb == 2 else 'i'}", *col.tolist())
    raw = header + struct.pack(f"<{n + 1}q", *crow.tolist()) + cols + bytes(-len(cols) % 8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


@pytest.mark.parametrize("k", [40, 70000])
def test_csr_loads_version_2_state_dict(k):
    cs = CSRLinear.from_float(nn.Linear(k, 6), co.CSR(sparsity=0.99 if k > 1000 else 0.5))
    x = randn_nonzero(3, k)
    old = {"index": _version_2_index(cs.crow, cs.col, 6, k), "values": cs.values.clone(), "bias": cs.bias.clone()}
    fresh = CSRLinear(k, 6)
    result = fresh.load_state_dict(old)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.index, cs.index) and torch.equal(fresh(x), cs(x))
    assert list(fresh.state_dict()) == ["crow", "col", "values", "bias"]


def test_csr_load_rejects_corrupt_files_naming_the_key():
    cs = CSRLinear.from_float(nn.Linear(40, 6), co.CSR(sparsity=0.5))
    good = cs.state_dict()
    v2 = {"index": _version_2_index(cs.crow, cs.col, 6, 40), "values": good["values"], "bias": good["bias"]}
    model = nn.Sequential(CSRLinear(40, 6))

    def load(sd):
        model.load_state_dict({f"0.{key}": t for key, t in sd.items()})

    bad_col = good["col"].clone()
    bad_col[3] = 200
    with pytest.raises(ValueError, match=r"0.col values must lie in \[0, in_features\) = \[0, 40\), got "
                                         r"0.col\[3\] = 200"):
        load({**good, "col": bad_col})
    bad_crow = good["crow"].clone()
    bad_crow[1] = 10**6
    with pytest.raises(ValueError, match="0.crow must start at 0, never decrease"):
        load({**good, "crow": bad_crow})
    with pytest.raises(ValueError, match=r"0.crow must be a 1-D int32/int64 tensor of shape \[N\+1\] = \[7\]"):
        load({**good, "crow": good["crow"][:-1]})
    nnz = cs.nnz
    with pytest.raises(ValueError, match=f"0.col has {nnz} entries but 0.values has {nnz - 1}"):
        load({**good, "values": good["values"][:-1]})
    with pytest.raises(ValueError, match="0.values must be a 1-D float32 or bfloat16 tensor, got torch.float16"):
        load({**good, "values": good["values"].half()})
    with pytest.raises(RuntimeError, match="Missing key.*0.col"):
        load({key: t for key, t in good.items() if key != "col"})
    bad_index = v2["index"].clone()
    bad_index[64 + 8 * 7 + 6:64 + 8 * 7 + 8] = torch.tensor([200], dtype=torch.int16).view(torch.uint8)
    with pytest.raises(ValueError, match=r"0.index \(its columns\) values must lie in"):
        load({**v2, "index": bad_index})
    with pytest.raises(ValueError, match=f"0.index holds {v2['index'].numel() - 1} bytes"):
        load({**v2, "index": v2["index"][:-1]})
    with pytest.raises(ValueError, match=r"0.index is for a \[6, 41\] weight, the layer is \[6, 40\]"):
        wide = CSRLinear.from_float(nn.Linear(41, 6), co.CSR(sparsity=0.5))
        load({**v2, "index": _version_2_index(wide.crow, wide.col, 6, 41)})
    with pytest.raises(RuntimeError, match="Unexpected key.*0.index"):  # version 3 keys win over an index
        load({**good, "index": v2["index"]})


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
