"""PQLinear: accuracy against the dequantized dense layer, k-means, refinement, state_dict,
save/load, compile/export, dtypes, errors."""

import copy
import pickle

import pytest
import torch
from torch import nn

import compressops as co
from compressops.algorithms.kmeans import kmeans_subspaces, pq_quantize_weight
from compressops.algorithms.pq_refine import GramObserver, output_error, refine_codebooks
from compressops.formats import pq as fpq
from compressops.nn import PQLinear

from .helpers import randn_nonzero

CONFIGS = [co.PQ(num_centroids=16, subvector_dim=4), co.PQ(num_centroids=256, subvector_dim=2),
           co.PQ(num_centroids=16, subvector_dim=8), co.PQ(num_centroids=256, subvector_dim=16)]


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c.num_centroids}d{c.subvector_dim}")
@pytest.mark.parametrize("bias", [True, False])
def test_from_float_forward_matches_dequantized_dense(cfg, bias):
    lin = nn.Linear(67, 45, bias=bias)  # K not a multiple of d
    q = PQLinear.from_float(lin, cfg)
    dense = q.to_float()
    assert torch.equal(dense.weight, q.dequantize())
    x = randn_nonzero(2, 5, 67)
    y = q(x)
    assert y.shape == (2, 5, 45) and y.dtype == torch.float32
    # k=16 quantizes the lookup table to 8 bits: within about 1% of the output scale
    tol = 0.02 if cfg.num_centroids == 16 else 1e-5
    assert rel(y, dense(x)) < tol
    # the decoded weight approximates the original (k-means on Gaussian weights)
    assert rel(q.dequantize(), lin.weight) < 0.75


def test_kmeans_deterministic_converges_and_no_empty_clusters():
    x = torch.randn(3, 500, 4)
    c1, a1 = kmeans_subspaces(x, 16, seed=0, max_iter=50)
    c2, a2 = kmeans_subspaces(x, 16, seed=0, max_iter=50)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert c1.shape == (3, 16, 4) and a1.shape == (3, 500)
    for s in range(3):
        assert torch.bincount(a1[s], minlength=16).min() > 0
    # better than the k-means++ seeding alone
    c0, a0 = kmeans_subspaces(x, 16, seed=0, max_iter=1)
    def inertia(c, a):
        return float(((x - torch.gather(c, 1, a[..., None].expand(-1, -1, 4))) ** 2).sum())
    assert inertia(c1, a1) <= inertia(c0, a0)
    # duplicated points (fewer distinct points than centroids) still work
    xd = torch.randn(1, 4, 2).repeat(1, 10, 1)
    c, a = kmeans_subspaces(xd, 16, seed=0)
    assert torch.isfinite(c).all()


def test_refinement_lowers_held_out_output_error():
    torch.manual_seed(1)
    k_in, n = 96, 64
    mix = torch.randn(k_in, k_in) / k_in ** 0.5
    mix[:, :8] *= 8  # anisotropic inputs: a few directions dominate
    x_cal, x_test = torch.randn(2000, k_in) @ mix.t(), torch.randn(500, k_in) @ mix.t()
    w = torch.randn(n, k_in)
    codes, cb = pq_quantize_weight(w, 16, 4)
    s = cb.shape[0]
    obs = GramObserver()
    obs.observe(x_cal[:1000])
    obs.observe(x_cal[1000:].reshape(10, 100, k_in))
    cb_r = refine_codebooks(w, fpq.unpacked_codes(codes, s, 16), cb, obs.result())
    before = output_error(w, fpq.dequantize(codes, cb, k_in), x_test)
    after = output_error(w, fpq.dequantize(codes, cb_r, k_in), x_test)
    assert after < 0.8 * before, (before, after)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_convert_with_calibration_refines_and_mapping():
    torch.manual_seed(0)
    model = TwoLayer()
    mix = torch.randn(48, 48)
    mix[:, :4] *= 6  # anisotropic, correlated inputs (G far from identity)
    cal = randn_nonzero(1024, 48) @ mix.t()
    plain = co.convert(model, co.PQ(num_centroids=16, subvector_dim=4), inplace=False)
    refined = co.convert(model, co.PQ(num_centroids=16, subvector_dim=4), calibration_data=cal, inplace=False)
    assert isinstance(refined.fc1, PQLinear) and isinstance(refined.fc2, PQLinear)
    x = randn_nonzero(512, 48) @ mix.t()
    ref = model.fc1(x)
    assert rel(refined.fc1(x), ref) < rel(plain.fc1(x), ref)
    mapped = co.convert(model, {"fc1": co.PQ(num_centroids=256, subvector_dim=2), "fc2": None}, inplace=False)
    assert isinstance(mapped.fc1, PQLinear) and isinstance(mapped.fc2, nn.Linear)
    rows = co.report(mapped)
    assert "pq" in str(rows)


def test_state_dict_round_trip_save_load(tmp_path):
    model = co.convert(TwoLayer(), co.PQ(num_centroids=16, subvector_dim=4), inplace=False)
    sd = model.fc1.state_dict()
    assert set(sd) == {"codes", "codebooks", "bias"}
    fresh = PQLinear.skeleton(nn.Linear(48, 64), co.PQ(num_centroids=16, subvector_dim=4))
    fresh.load_state_dict(sd)
    x = randn_nonzero(3, 48)
    assert torch.equal(fresh(x), model.fc1(x))
    path = tmp_path / "m.pt"
    co.save(model, str(path))
    loaded = co.load(TwoLayer(), str(path))
    assert isinstance(loaded.fc1, PQLinear)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("k", [16, 256])
def test_memory_holds_only_the_pack(k):
    """The layer holds the pack and the bias; codes and codebooks are read back from the pack."""
    q = PQLinear.from_float(nn.Linear(67, 45), co.PQ(num_centroids=k, subvector_dim=4, max_iter=3))
    s = 17
    assert {n for n, _ in q.named_buffers()} == {"packed", "bias"}
    assert q.packed.shape == (45, -(-fpq.packed_bytes(45, 67, 4, k) // 45))
    cb = q.codebooks
    assert cb.dtype == torch.float32 and cb.shape == (s, k, 4)
    assert cb.untyped_storage().data_ptr() == q.packed.untyped_storage().data_ptr()
    codes = q.codes
    assert codes.dtype == torch.uint8 and codes.shape == fpq.codes_shape(45, s, k)
    assert torch.equal(co.ops.pq_pack(codes, cb, 67), q.packed)
    assert q.compressed_bytes() == codes.numel() + 4 * cb.numel() + 4 * 45
    assert q.compressed_bytes() == sum(t.numel() * t.element_size() for t in q.state_dict().values())
    # writes to the codebooks view change the layer
    x = randn_nonzero(3, 67)
    before = q(x)
    with torch.no_grad():
        q.codebooks.mul_(2)
    torch.testing.assert_close(q(x), 2 * (before - q.bias) + q.bias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [16, 256])
def test_state_dict_holds_the_canonical_tensors(k):
    lin = nn.Linear(67, 45)
    codes, codebooks = pq_quantize_weight(lin.weight, k, 4, max_iter=3)
    q = PQLinear.from_float(lin, co.PQ(num_centroids=k, subvector_dim=4, max_iter=3))
    sd = q.state_dict()
    assert list(sd) == ["codes", "codebooks", "bias"]
    assert torch.equal(sd["codes"], codes) and sd["codes"].is_contiguous()
    assert torch.equal(sd["codebooks"], codebooks) and sd["codebooks"].is_contiguous()
    # the skeleton holds the zero pack, which is the pack of zero codes and codebooks
    fresh = PQLinear(67, 45, num_centroids=k, subvector_dim=4)
    assert torch.equal(fresh.packed, fpq.zero_pack(45, 67, 4, k))
    assert not fresh.codes.any() and not fresh.codebooks.any()
    result = fresh.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.packed, q.packed)
    x = randn_nonzero(4, 67)
    assert torch.equal(fresh(x), q(x))
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert torch.equal(other.packed, q.packed) and torch.equal(other(x), q(x))


@pytest.mark.parametrize("k, d, k_in, n", [(16, 1, 2, 20), (256, 1, 3, 8), (16, 4, 67, 45), (256, 2, 67, 45)])
def test_state_dict_tensors_are_compact_and_share_nothing_with_the_pack(k, d, k_in, n):
    """Also where a reshaped view of the pack happens to be contiguous (one block of rows, one code
    byte per row, d=1): a saved tensor holding the pack's storage would save the whole pack."""
    q = PQLinear.from_float(nn.Linear(k_in, n), co.PQ(num_centroids=k, subvector_dim=d, max_iter=2))
    pack_storage = q.packed.untyped_storage().data_ptr()
    for name, t in q.state_dict().items():
        assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
        assert t.untyped_storage().data_ptr() != pack_storage, name
    codes = q.codes
    codes.fill_(0)  # a copy: the layer keeps its codes
    assert q.codes.any()


def test_load_state_dict_errors():
    q = PQLinear(16, 8, num_centroids=16, subvector_dim=4)
    good = PQLinear.from_float(nn.Linear(16, 8), co.PQ(num_centroids=16, subvector_dim=4, max_iter=2)).state_dict()
    with pytest.raises(RuntimeError, match="Missing key.*codes"):
        q.load_state_dict({"codebooks": good["codebooks"], "bias": good["bias"]})
    with pytest.raises(RuntimeError, match=r"codebooks: the checkpoint holds torch.float64 \(4, 16, 4\), "
                                           r"PQLinear needs torch.float32 \(4, 16, 4\)"):
        q.load_state_dict({**good, "codebooks": good["codebooks"].double()})
    with pytest.raises(RuntimeError, match=r"codes: the checkpoint holds torch.uint8 \(8, 4\), "
                                           r"PQLinear needs torch.uint8 \(8, 2\)"):
        q.load_state_dict({**good, "codes": torch.zeros(8, 4, dtype=torch.uint8)})
    assert torch.equal(q.packed, fpq.zero_pack(8, 16, 4, 16))  # a rejected tensor leaves the pack alone
    with pytest.raises(RuntimeError, match="Unexpected key.*packed"):
        q.load_state_dict({**good, "packed": q.packed})
    missing = q.load_state_dict({"bias": good["bias"]}, strict=False)
    assert sorted(missing.missing_keys) == ["codebooks", "codes"]


def test_repr_bytes_bf16_and_module_to_bf16():
    q = PQLinear.from_float(nn.Linear(40, 24), co.PQ(num_centroids=16, subvector_dim=4))
    assert "num_centroids=16" in repr(q) and "subvector_dim=4" in repr(q)
    assert q.format_label == "pq (k=16, d=4)" and q.shape_label == "24x40"
    assert q.compressed_bytes() == 24 * 5 + 10 * 16 * 4 * 4 + 24 * 4
    assert q.dense_bytes() == 4 * (24 * 40 + 24)
    assert q.config == co.PQ(num_centroids=16, subvector_dim=4)
    x = randn_nonzero(4, 40)
    y = q(x)
    yb = q(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert rel(yb.float(), y) < 0.03
    q.to(torch.bfloat16)
    assert q.codebooks.dtype == torch.float32 and q.bias.dtype == torch.float32


def test_no_grad_inference_mode_and_empty_batch():
    q = PQLinear.from_float(nn.Linear(30, 20), co.PQ(num_centroids=256, subvector_dim=2))
    x = randn_nonzero(3, 30)
    with torch.no_grad():
        a = q(x)
    with torch.inference_mode():
        b = q(x)
    assert torch.equal(a, b)
    assert q(torch.randn(0, 30)).shape == (0, 20)


def test_errors():
    with pytest.raises(ValueError, match="num_centroids"):
        co.PQ(num_centroids=64)
    with pytest.raises(ValueError, match="subvector_dim"):
        co.PQ(subvector_dim=3)
    with pytest.raises(TypeError, match="nn.Linear"):
        PQLinear.from_float(nn.Conv2d(3, 3, 1))
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PQLinear.from_float(lin, name="layer.x")
    q = PQLinear.from_float(nn.Linear(8, 4), co.PQ(num_centroids=16, subvector_dim=2))
    with pytest.raises((RuntimeError, ValueError), match="K="):
        q(torch.randn(2, 9))
    with pytest.raises(ValueError, match="Gram"):
        PQLinear.from_float(nn.Linear(8, 4), co.PQ(), calibration=torch.eye(7))
    assert co.PQ().to_dict() == {"format": "pq", "num_centroids": 256, "subvector_dim": 4, "refine": True,
                                 "seed": 0, "max_iter": 25}


@pytest.mark.parametrize("k", [16, 256])
def test_torch_compile_fullgraph_matches_eager(k):
    model = co.convert(TwoLayer(), co.PQ(num_centroids=k, subvector_dim=4))
    x = randn_nonzero(5, 48)
    eager = model(x)
    out = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(out, eager)


def test_torch_export_matches_eager():
    model = co.convert(TwoLayer(), co.PQ(num_centroids=16, subvector_dim=4))
    x = randn_nonzero(3, 48)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("compressops.pq_linear" in t for t in targets)
    x2 = randn_nonzero(7, 48)
    assert torch.equal(ep.module()(x2), model(x2))


def test_bench_imports_and_study_quick_slice(capsys):
    import importlib.util
    from pathlib import Path

    import compressops.bench.pq_linear as bench  # noqa: F401  (the benchmark is only imported here)

    path = Path(__file__).resolve().parents[1] / "examples" / "pq_digits_study.py"
    spec = importlib.util.spec_from_file_location("pq_digits_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    threads = torch.get_num_threads()
    try:
        assert study.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| 4 | 16 |" in out
