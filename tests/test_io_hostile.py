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


def _layer(name):
    """A small converted layer of example `name` (its first compressed module)."""
    model = convert_example(name)
    return next(m for m in model.modules() if isinstance(m, co.configs.compressed_types()))


# (example, state_dict key, how to spoil it, message)
SPOILED = [
    ("int8", "weight_scale", lambda t: t.double(), (r"weight_scale: the checkpoint holds torch.float64 \(80,\), "
                                                   r"Int8Linear needs torch.float32 \(80,\)")),
    ("int8", "bias", lambda t: t.half(), r"bias: the checkpoint holds torch.float16"),
    ("int8", "weight", lambda t: torch.full(t.shape, 200.7), r"weight: the checkpoint holds torch.float32"),
    ("int8", "weight_scale", lambda t: torch.where(torch.arange(t.numel()) == 3, float("nan"), t),
     r"weight_scale: the checkpoint holds NaN/Inf, Int8Linear needs finite values"),
    ("int8", "weight_scale", lambda t: -t,
     r"weight_scale: the checkpoint holds -[0-9.e-]+, Int8Linear needs values >= 0"),
    ("int8_static", "act_scale", lambda t: torch.tensor(float("inf")), "act_scale: the checkpoint holds NaN/Inf"),
    ("int8_static", "act_scale", lambda t: torch.tensor(0.0), (r"act_scale: the checkpoint holds 0, Int8Linear needs "
                                                               r"values >= 1.17549e-38")),
    ("int4", "scales", lambda t: -t, "scales: the checkpoint holds -"),
    ("int4", "scales", lambda t: t * float("inf"), "scales: the checkpoint holds NaN/Inf"),
    ("sparse24_int8", "weight_scale", lambda t: t.half(), r"weight_scale: the checkpoint holds torch.float16"),
    ("sparse24_int8", "weight_scale", lambda t: -t, "weight_scale: the checkpoint holds -"),
    ("sparse24", "values", lambda t: t / 0, "values: the checkpoint holds NaN/Inf"),
    ("csr", "values", lambda t: t / 0, "values: the checkpoint holds NaN/Inf, CSRLinear needs finite values"),
    ("pq16", "codebooks", lambda t: t * float("nan"), "codebooks: the checkpoint holds NaN/Inf"),
    ("pq16", "codes", lambda t: torch.full(t.shape, 300), r"codes: the checkpoint holds torch.int64"),
    ("half", "weight", lambda t: t * float("inf"), "weight: the checkpoint holds NaN/Inf"),
    ("binary_w1a1", "alpha", lambda t: t * float("nan"), "alpha: the checkpoint holds NaN/Inf, BinaryConv2d needs"),
    ("binary_w1a1", "alpha", lambda t: t.double(), r"alpha: the checkpoint holds torch.float64"),
    ("binary_w1a1", "bias", lambda t: t.half(), r"bias: the checkpoint holds torch.float16"),
    ("binary_w1a1", "weight_bits", lambda t: t.int(), r"weight_bits: the checkpoint holds torch.int32"),
]


@pytest.mark.parametrize("name, key, spoil, message", SPOILED, ids=[f"{n}-{k}-{i}" for i, (n, k, _, _) in
                                                                    enumerate(SPOILED)])
def test_a_spoiled_tensor_raises_naming_the_key_and_changes_nothing(name, key, spoil, message):
    """Stored tensors keep their format's exact dtype (no silent cast: 200.7 into int8, 300 into uint8)
    and legal values (finite; scales >= 0); a failed load_state_dict leaves the layer as it was."""
    layer = _layer(name)
    before = {k: t.clone() for k, t in layer.state_dict().items()}
    bad = {**before, key: spoil(before[key])}
    with pytest.raises(RuntimeError, match=f"mismatch for {message}"):
        layer.load_state_dict(bad)
    after = layer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_zero_scale_loads():
    """An all-zero weight row quantizes to scale 0: legal, so it loads."""
    layer = _layer("int8")
    sd = {k: t.clone() for k, t in layer.state_dict().items()}
    sd["weight"][2] = 0
    sd["weight_scale"][2] = 0
    layer.load_state_dict(sd)
    assert layer.weight_scale[2] == 0


@pytest.mark.parametrize("name", ["int8", "csr", "sparse24_int8", "binary_w1a1"])
def test_a_failed_co_load_leaves_the_model_as_it_was(name, tmp_path):
    """One bad tensor in the LAST layer: co.load raises before the first layers' values or any
    module type changes."""
    _, kind = EXAMPLES[name]
    saved = convert_example(name)
    path = tmp_path / "bad.safetensors"
    co.save(saved, str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    stored = load_file(str(path))
    last = max(json.loads(metadata["compressops_layers"]), key=lambda n: [int(p) if p.isdigit() else p
                                                                           for p in n.split(".")])
    scale_key = next(f"{last}.{k}" for k in ("weight_scale", "alpha", "values") if f"{last}.{k}" in stored)
    stored[scale_key] = stored[scale_key] * float("nan")
    save_file(stored, str(path), metadata=metadata)
    target = tiny_model(kind)
    before = {k: t.clone() for k, t in target.state_dict().items()}
    types = [type(m) for m in target.modules()]
    with pytest.raises(RuntimeError, match=f"mismatch for {scale_key}: the checkpoint holds NaN/Inf"):
        co.load(target, str(path))
    assert [type(m) for m in target.modules()] == types
    after = target.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_failed_co_load_into_a_converted_model_leaves_it_as_it_was(tmp_path):
    """The same when the model is already converted (its layers are loaded into copies, then swapped in)."""
    saved = convert_example("int8")
    path = tmp_path / "bad.safetensors"
    co.save(saved, str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    stored = load_file(str(path))
    stored["4.weight_scale"] = -stored["4.weight_scale"]
    save_file(stored, str(path), metadata=metadata)
    target = convert_example("int8")
    layers = list(target.modules())
    before = {k: t.clone() for k, t in target.state_dict().items()}
    with pytest.raises(RuntimeError, match="mismatch for 4.weight_scale"):
        co.load(target, str(path))
    assert all(a is b for a, b in zip(target.modules(), layers, strict=True))
    after = target.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    stored["4.weight_scale"] = -stored["4.weight_scale"]
    stored["2.bias"] = stored["2.bias"][:3]  # a bad shape in another layer is caught before the swap too
    save_file(stored, str(path), metadata=metadata)
    with pytest.raises(RuntimeError, match=r"mismatch for 2.bias"):
        co.load(target, str(path))
    assert all(a is b for a, b in zip(target.modules(), layers, strict=True))


def _int8_mlp_file(tmp_path):
    m = co.convert(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)), co.Int8())
    path = tmp_path / "mlp.safetensors"
    co.save(m, str(path))
    return m, path


def _rewrite_metadata(path, **metadata):
    """Write the file again with some metadata entries replaced (the tensors unchanged)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(metadata)
    save_file(load_file(str(path)), str(path), metadata=meta)


def _float_mlp():
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


@pytest.mark.parametrize("layers, message", [
    ("{not json", "metadata is not valid JSON"),
    ("[1, 2]", "metadata must be a JSON object, got list"),
    ('{"0": {"config": {"format": "int8", "act": "dynamic"}}}', "describes layer '0' as"),
    ('{"0": {"class": "Int8Linear"}}', "describes layer '0' as"),
    ('{"0": {"class": "Int8Linear", "config": {"act": "dynamic"}}}', "a config dict needs a 'format' key"),
    ('{"0": {"class": "Int8Linear", "config": {"format": "int8", "nope": 1}}}', "invalid config"),
    ('{"5": {"class": "Int8Linear", "config": {"format": "int8", "act": "dynamic"}}}',
     "stores layer '5', which Sequential does not have"),
    ('{"1": {"class": "Int8Linear", "config": {"format": "int8", "act": "dynamic"}}}',
     "as Int8Linear, which replaces a Linear, but the model holds a ReLU there"),
    ('{"0": {"class": "Int4Linear", "config": {"format": "int8", "act": "dynamic"}}}',
     "as Int4Linear with a config of format 'int8', which Int4Linear does not store"),
    ('{"0": {"class": "BinaryConv2d", "config": {"format": "binary"}}}',
     "as BinaryConv2d, which replaces a Conv2d, but the model holds a Linear there"),
])
def test_a_file_whose_layer_metadata_lies_raises_a_value_error(tmp_path, layers, message):
    """Found by the fuzz target: KeyError, AttributeError from corrupt metadata; now ValueErrors that say
    what is wrong, and the model is left as it was."""
    _, path = _int8_mlp_file(tmp_path)
    _rewrite_metadata(path, compressops_layers=layers)
    model = _float_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        co.load(model, str(path))
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_aliases_metadata_that_is_not_an_object_raises(tmp_path):
    _, path = _int8_mlp_file(tmp_path)
    _rewrite_metadata(path, compressops_aliases='"0.weight"')
    with pytest.raises(ValueError, match="compressops_aliases metadata must be a JSON object"):
        co.load(_float_mlp(), str(path))


def test_one_module_at_two_places_saves_and_loads(tmp_path):
    """A layer used twice (weight sharing across depth) is listed under both names and comes back as one
    module at both places; a file that names only the first place loads the same."""
    lin = nn.Linear(8, 8)
    model = co.convert(nn.Sequential(lin, nn.ReLU(), lin), co.Int8())
    assert model[0] is model[2]
    path = tmp_path / "shared.safetensors"
    co.save(model, str(path))
    with safe_open(str(path), framework="pt") as f:
        assert set(json.loads(f.metadata()["compressops_layers"])) == {"0", "2"}
    x = torch.randn(3, 8)
    for layers in (None, json.dumps({"0": {"class": "Int8Linear", "config": co.Int8().to_dict()}})):
        if layers is not None:
            _rewrite_metadata(path, compressops_layers=layers)
        shared = nn.Linear(8, 8)
        fresh = co.load(nn.Sequential(shared, nn.ReLU(), shared), str(path))
        assert isinstance(fresh[0], co.nn.Int8Linear) and fresh[2] is fresh[0]
        assert torch.equal(fresh(x), model(x))
