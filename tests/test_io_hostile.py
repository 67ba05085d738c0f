"""compressops.save/load on the cases issue 18 found: tied weights, a model already converted with
another config, and files that lie about their aliases."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import compressops as co

from .families import EXAMPLES, convert_example, tiny_input, tiny_model
from .helpers import randn_nonzero


def tied_model():
    m = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 10, bias=False))
    m[3].weight = nn.Parameter(randn_nonzero(10, 24))
    m[0].weight = nn.Parameter(randn_nonzero(10, 16))
    return m


def test_tied_weights_save_once_and_tie_again(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 10, bias=False), nn.Linear(10, 10))
    m[1].weight = m[0].weight  # tied, as language models tie embedding and output
    co.convert(m, {"2": co.Int8()})
    path = tmp_path / "tied.safetensors"
    co.save(m, str(path))
    with safe_open(str(path), framework="pt") as f:
        assert "1.weight" not in f.keys() and "0.weight" in f.keys()
        assert json.loads(f.metadata()["compressops_aliases"]) == {"1.weight": "0.weight"}
    fresh = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 10, bias=False), nn.Linear(10, 10))
    fresh[1].weight = fresh[0].weight
    co.load(fresh, str(path))
    assert fresh[1].weight is fresh[0].weight
    assert torch.equal(fresh[0].weight, m[0].weight)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh(ids), m(ids))
    untied = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 10, bias=False), nn.Linear(10, 10))
    co.load(untied, str(path))  # an untied skeleton gets the same values in both places
    assert torch.equal(untied[1].weight, m[0].weight)


def test_views_sharing_memory_are_saved_as_copies(tmp_path):
    m = nn.Module()
    base = randn_nonzero(8, 4)
    m.register_buffer("a", base[:4])
    m.register_buffer("b", base[4:])
    path = tmp_path / "views.safetensors"
    co.save(m, str(path))
    stored = load_file(str(path))
    assert torch.equal(stored["a"], base[:4]) and torch.equal(stored["b"], base[4:])


def test_alias_to_a_missing_key_raises(tmp_path):
    path = tmp_path / "lie.safetensors"
    save_file({"0.weight": torch.zeros(10, 16)}, str(path),
              metadata={"compressops_layers": "{}", "compressops_aliases": json.dumps({"1.weight": "9.weight"})})
    m = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 10, bias=False))
    with pytest.raises(ValueError, match="ties '1.weight' to '9.weight', which the file does not hold"):
        co.load(m, str(path))


def test_the_files_config_wins_over_an_already_converted_model(tmp_path):
    """A dynamic W8A8 file loaded into a weight-only model runs W8A8 (issue 18)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    dynamic = co.convert(model, co.Int8(act="dynamic"), inplace=False)
    path = tmp_path / "dynamic.safetensors"
    co.save(dynamic, str(path))
    target = co.convert(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)), co.Int8(act="weight_only"))
    co.load(target, str(path))
    assert target[0].config == co.Int8(act="dynamic") and target[2].config == co.Int8(act="dynamic")
    x = randn_nonzero(3, 32)
    assert torch.equal(target(x), dynamic(x))


def test_the_files_config_wins_over_another_family(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    int8 = co.convert(model, co.Int8(), inplace=False)
    path = tmp_path / "int8.safetensors"
    co.save(int8, str(path))
    target = co.convert(nn.Sequential(nn.Linear(32, 16)), co.Half())
    co.load(target, str(path))
    assert type(target[0]) is type(int8[0])
    x = randn_nonzero(3, 32)
    assert torch.equal(target(x), int8(x))


def test_sparse24_int8_minus_128_is_refused_on_load(tmp_path):
    """Int8 2:4 values are symmetric: -128 in a file raises naming the key, from load_state_dict and co.load."""
    model = co.convert(nn.Sequential(nn.Linear(32, 8)), co.Sparse24(dtype=torch.int8))
    sd = {key: t.clone() for key, t in model.state_dict().items()}  # values is a view into the pack
    sd["0.values"][2, 7] = -128
    with pytest.raises(RuntimeError, match=r"mismatch for 0.values: the checkpoint holds -128, Sparse24Linear's "
                                           r"symmetric int8 values lie in \[-127, 127\]"):
        co.convert(nn.Sequential(nn.Linear(32, 8)), co.Sparse24(dtype=torch.int8)).load_state_dict(sd)
    path = tmp_path / "minus128.safetensors"
    co.save(model, str(path))
    stored = load_file(str(path))
    stored["0.values"][2, 7] = -128
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(stored, str(path), metadata=metadata)
    with pytest.raises(RuntimeError, match="mismatch for 0.values: the checkpoint holds -128"):
        co.load(nn.Sequential(nn.Linear(32, 8)), str(path))


META_FROM_FLOAT = [("Int8Linear", co.Int8()), ("Int4Linear", co.Int4(group_size=32)), ("Sparse24Linear", co.Sparse24()),
                   ("CSRLinear", co.CSR(sparsity=0.5)), ("PQLinear", co.PQ(num_centroids=16, subvector_dim=4)),
                   ("HalfLinear", co.Half()), ("BinaryLinear", co.Binary()), ("BinaryConv2d", co.Binary())]


@pytest.mark.parametrize("cls_name, config", META_FROM_FLOAT, ids=[c for c, _ in META_FROM_FLOAT])
def test_from_float_of_a_meta_layer_is_its_skeleton(cls_name, config):
    """A meta layer holds no values to quantize (it used to fail in Tensor.item()): from_float gives the
    skeleton, on the meta device, with the shapes and config a real conversion has."""
    cls = getattr(co.nn, cls_name)
    make = (lambda **kw: nn.Conv2d(64, 8, 3, padding=1, **kw)) if cls is co.nn.BinaryConv2d else \
        (lambda **kw: nn.Linear(64, 8, **kw))
    meta = cls.from_float(make(device="meta"), config)
    real = cls.from_float(make(), config)
    assert type(meta) is cls and meta.config == real.config
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
    # a CSR skeleton holds no nonzeros: nnz (col's and values' length) comes from the file it loads
    nnz_sized = {"col", "values"} if cls is co.nn.CSRLinear else set()

    def layout(layer):
        return {k: (t.dtype, None if k in nnz_sized else t.shape) for k, t in layer.state_dict().items()}

    assert layout(meta) == layout(real)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_convert_of_a_meta_model_then_load_runs_like_the_saved_model(name, tmp_path):
    """init_empty_weights, convert, to_empty, load: every family (calibrated ones included: a meta
    layer needs no calibration data) gives the saved model's outputs."""
    config, kind = EXAMPLES[name]
    saved = convert_example(name)
    path = tmp_path / "model.safetensors"
    co.save(saved, str(path))
    with torch.device("meta"):
        empty = tiny_model(kind)
    empty = co.convert(empty, config)
    assert [type(m) for m in empty.modules()] == [type(m) for m in saved.modules()]
    co.load(empty.to_empty(device="cpu"), str(path))
    x = tiny_input(kind)
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), saved(x))
