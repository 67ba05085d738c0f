"""Fused Q/K/V (compressops/nn/fused_qkv.py): convert fuses the int8 query/key/value projections of a
BERT self-attention into one GEMM, and the model computes bit for bit what the unfused one does, through
state_dict, co.save/co.load, pickling, deepcopy and torch.compile/export."""

import copy
import io
import pickle

import pytest
import torch

import compressops as co
from compressops import configs
from compressops.nn import FusedQKV, Int8Linear, fuse_qkv, unfuse_qkv

transformers = pytest.importorskip("transformers")


def _bert(seed=0):
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    torch.manual_seed(seed)
    return transformers.BertModel(cfg).eval()


def _inputs(batch=3, tokens=20):
    ids = torch.randint(1, 100, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, tokens // 2:] = 0  # padding in one row
    return {"input_ids": ids * mask, "attention_mask": mask}


def _unfused(model, config=None):
    """co.convert without the model passes: the layers as they were before fusing."""
    passes = list(configs._MODEL_PASSES)
    configs._MODEL_PASSES.clear()
    try:
        return co.convert(copy.deepcopy(model), config or co.Int8(), progress=False)
    finally:
        configs._MODEL_PASSES.extend(passes)


def _out(model, enc):
    with torch.inference_mode():
        return model(**enc).last_hidden_state


def _assert_fused(model, layers=2):
    groups = [m for m in model.modules() if isinstance(m, FusedQKV)]
    assert len(groups) == layers
    for layer in model.encoder.layer:
        att = layer.attention.self
        for i, p in enumerate(("query", "key", "value")):
            member = getattr(att, p)
            assert type(member) is Int8Linear and member._qkv[0] is att.fused_qkv and member.weight_packed.numel() == 0
            assert member._qkv[1:] == (48 * i, 48 * (i + 1))


@pytest.fixture(scope="module")
def models():
    float_model = _bert()
    return float_model, co.convert(copy.deepcopy(float_model), co.Int8(), progress=False), _unfused(float_model)


def test_convert_fuses_and_outputs_are_bit_identical(models):
    _, fused, plain = models
    _assert_fused(fused)
    assert not any(isinstance(m, FusedQKV) for m in plain.modules())
    for batch, tokens in ((3, 20), (1, 7)):
        enc = _inputs(batch, tokens)
        assert torch.equal(_out(fused, enc), _out(plain, enc))


def test_unfuse_and_fuse_again(models):
    _, fused, plain = models
    model = copy.deepcopy(fused)
    assert unfuse_qkv(model) == 2 and unfuse_qkv(model) == 0
    assert not any(isinstance(m, FusedQKV) for m in model.modules())
    att = model.encoder.layer[0].attention.self
    assert att.query._qkv is None and att.query.weight_packed.numel() > 0
    assert not att._forward_pre_hooks and not att._forward_pre_hooks_with_kwargs
    enc = _inputs()
    assert torch.equal(_out(model, enc), _out(plain, enc))
    assert fuse_qkv(model) == 2
    _assert_fused(model)
    assert torch.equal(_out(model, enc), _out(plain, enc))


def test_one_gemm_per_attention(models):
    _, fused, _ = models
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append(out.shape[-1]))
             for m in fused.modules() if isinstance(m, FusedQKV)]
    try:
        _out(fused, _inputs())
    finally:
        for h in hooks:
            h.remove()
    assert calls == [3 * 48, 3 * 48]  # once per layer, not once per projection


def test_state_dict_report_and_bytes_are_the_unfused_ones(models):
    _, fused, plain = models
    sd, sd_plain = fused.state_dict(), plain.state_dict()
    assert list(sd) == list(sd_plain) and all(torch.equal(sd[k], sd_plain[k]) for k in sd)
    rows, rows_plain = co.report(fused).rows, co.report(plain).rows
    assert [(r.name, r.bytes, r.dense_bytes) for r in rows] == [(r.name, r.bytes, r.dense_bytes) for r in rows_plain]
    formats = {r.name: r.format for r in rows}
    assert formats["encoder.layer.0.attention.self.key"] == "int8 (dynamic, fused q/k/v)"
    assert formats["encoder.layer.0.attention.output.dense"] == "int8 (dynamic)"
    att, att_plain = fused.encoder.layer[1].attention.self, plain.encoder.layer[1].attention.self
    assert torch.equal(att.value.weight, att_plain.value.weight)
    assert torch.equal(att.value.dequantize(), att_plain.value.dequantize())


def test_load_state_dict_of_another_model_repacks_the_fused_rows(models):
    _, fused, _ = models
    other = _unfused(_bert(seed=1))
    target = copy.deepcopy(fused)
    target.load_state_dict(other.state_dict())
    _assert_fused(target)
    enc = _inputs()
    assert torch.equal(_out(target, enc), _out(other, enc))


def test_save_load_pickle_deepcopy(models, tmp_path):
    _, fused, plain = models
    enc = _inputs()
    expected = _out(plain, enc)
    path = str(tmp_path / "m.safetensors")
    co.save(fused, path)
    loaded = co.load(_bert(seed=2), path)
    _assert_fused(loaded)
    assert torch.equal(_out(loaded, enc), expected)
    # a file of the unfused model is the same file
    co.save(plain, str(tmp_path / "plain.safetensors"))
    assert torch.equal(_out(co.load(_bert(seed=3), str(tmp_path / "plain.safetensors")), enc), expected)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    for copied in (pickle.loads(pickle.dumps(fused)), copy.deepcopy(fused), torch.load(buf, weights_only=False)):
        _assert_fused(copied)
        assert torch.equal(_out(copied, enc), expected)


def test_hugging_face_round_trip(models, tmp_path):
    _, fused, plain = models
    fused.save_pretrained(tmp_path)
    loaded = transformers.BertModel.from_pretrained(tmp_path).eval()
    _assert_fused(loaded)
    enc = _inputs()
    assert torch.equal(_out(loaded, enc), _out(plain, enc))


def test_a_projection_called_on_its_own(models):
    _, fused, plain = models
    x = torch.randn(5, 48)
    for p in ("query", "key", "value"):
        member, member_plain = (getattr(m.encoder.layer[0].attention.self, p) for m in (fused, plain))
        with torch.inference_mode():
            assert torch.equal(member(x), member_plain(x))
        alone = copy.deepcopy(member)  # takes a private copy of the pack along
        with torch.inference_mode():
            assert torch.equal(alone(x), member_plain(x))


def test_replaced_projection_turns_the_fused_path_off(models):
    _, fused, plain = models
    model = copy.deepcopy(fused)
    att = model.encoder.layer[0].attention.self
    att.key = copy.deepcopy(plain.encoder.layer[0].attention.self.key)  # an unfused layer in its place
    enc = _inputs()
    assert torch.equal(_out(model, enc), _out(plain, enc))


def test_not_fused_where_one_quantization_cannot_serve_three():
    model = _bert()
    for config in (co.Int8(act="weight_only"), {"*.key": None, "*": co.Int8()}, co.Int4(group_size=32)):
        converted = co.convert(copy.deepcopy(model), config, progress=False)
        assert not any(isinstance(m, FusedQKV) for m in converted.modules()), config
    calibration = [_inputs()]
    static = co.convert(copy.deepcopy(model), co.Int8(act="static"), calibration_data=calibration, progress=False)
    assert not any(isinstance(m, FusedQKV) for m in static.modules())
    assert fuse_qkv(static) == 0 and fuse_qkv(torch.nn.Linear(3, 3)) == 0
    with pytest.raises(TypeError, match="fuse_qkv: model must be an nn.Module, got int"):
        fuse_qkv(3)
    with pytest.raises(TypeError, match="unfuse_qkv: model must be an nn.Module, got str"):
        unfuse_qkv("model")
    with pytest.raises(TypeError, match="register_model_pass: expected a callable, got int"):
        configs.register_model_pass(1)
    assert fuse_qkv in configs.model_passes()


def test_compile_and_export(models):
    _, fused, plain = models
    att, att_plain = fused.encoder.layer[0].attention.self, plain.encoder.layer[0].attention.self
    x = torch.randn(2, 9, 48)
    with torch.inference_mode():
        expected = att_plain(x)[0]
        assert torch.equal(att(x)[0], expected)
        compiled = torch.compile(att, fullgraph=True)(x)[0]
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    exported = torch.export.export(att, (x,))
    assert sum(n.target == torch.ops.compressops.int8_linear.default for n in exported.graph.nodes) == 1
    with torch.inference_mode():
        assert torch.equal(exported.module()(x)[0], expected)
