"""Int8Embedding / Int4Embedding: accuracy, state_dict, save/load, copies, compile/export, convert and
report, and tied embedding/lm-head pairs (tiny GPT-2) that keep one compressed copy."""

import copy
import io
import os
import pickle

import pytest
import torch
from torch import nn

import compressops as co
from compressops.nn import Int4Embedding, Int8Embedding, Int8Linear


class Tagger(nn.Module):
    """Token and position embeddings, a LayerNorm, a classifier."""

    def __init__(self, vocab=300, dim=48):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(16, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 5)

    def forward(self, ids):
        return self.fc(self.norm(self.tok(ids) + self.pos(torch.arange(ids.shape[-1]))))


def _ids(batch=3, seq=9, vocab=300):
    return torch.randint(0, vocab, (batch, seq))


def _rel(a, b):
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


@pytest.mark.parametrize("make", [lambda e: Int8Embedding.from_float(e),
                                  lambda e: Int4Embedding.from_float(e, co.Int4(group_size=32, embeddings=True)),
                                  lambda e: Int4Embedding.from_float(e, co.Int4(group_size=64, symmetric=True,
                                                                                embeddings=True))],
                         ids=["int8", "int4", "int4_sym"])
def test_from_float_accuracy_state_dict_to_float_and_copies(make):
    emb = nn.Embedding(200, 72, padding_idx=3)
    q = make(emb)
    ids = torch.randint(0, 200, (4, 6))
    y = q(ids)
    ref = emb(ids).detach()
    assert y.shape == (4, 6, 72) and y.dtype == torch.float32
    assert _rel(y, ref) < (0.01 if isinstance(q, Int8Embedding) else 0.15)
    assert torch.equal(y, q.dequantize()[ids]) and torch.equal(q.to_float()(ids), y)
    assert q.to_float().padding_idx == 3 and "padding_idx=3" in repr(q)
    assert q.dense_bytes() == 4 * 200 * 72 and q.compressed_bytes() < q.dense_bytes() / 3.5
    sd = q.state_dict()
    fresh = type(q).skeleton(nn.Embedding(200, 72, padding_idx=3), q.config)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(ids), y)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    for other in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q), torch.load(buf, weights_only=False)):
        assert torch.equal(other(ids), y)
    assert q.to(torch.bfloat16)(ids).dtype == torch.float32  # the stored format keeps its dtypes


def test_state_dict_format_and_hostile_loads_change_nothing():
    q = Int8Embedding.from_float(nn.Embedding(10, 8))
    sd = q.state_dict()
    assert {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()} == {"weight": (torch.int8, (10, 8)),
                                                                     "weight_scale": (torch.float32, (10,))}
    before = q.weight.clone()
    bad = dict(sd, weight=sd["weight"].clone())
    bad["weight"][0, 0] = -128
    with pytest.raises(RuntimeError, match="-128"):
        q.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="NaN/Inf"):
        q.load_state_dict(dict(sd, weight_scale=torch.full((10,), float("nan"))))
    with pytest.raises(RuntimeError, match="torch.float64"):
        q.load_state_dict(dict(sd, weight_scale=sd["weight_scale"].double()))
    assert torch.equal(q.weight, before)
    q4 = Int4Embedding.from_float(nn.Embedding(10, 32), co.Int4(group_size=32, embeddings=True))
    sd4 = q4.state_dict()
    assert set(sd4) == {"qweight", "scales", "zeros"}
    with pytest.raises(RuntimeError, match=r"zero points must lie in \[0, 15\]"):
        q4.load_state_dict(dict(sd4, zeros=torch.full_like(sd4["zeros"], 16)))


def test_bad_inputs_and_unsupported_embeddings():
    q = Int8Embedding.from_float(nn.Embedding(10, 8))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 10\).*found 10"):
        q(torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="indices must be int32 or int64"):
        q(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="expected nn.Embedding"):
        Int8Embedding.from_float(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="max_norm"):
        Int8Embedding.from_float(nn.Embedding(10, 8, max_norm=1.0))
    model = nn.Sequential(nn.Embedding(10, 8, max_norm=1.0))
    co.convert(model, co.Int8(embeddings=True))
    assert type(model[0]) is nn.Embedding and "max_norm" in co.report(model).rows[0].note


def test_padding_row_is_read_like_any_other():
    emb = nn.Embedding(6, 4, padding_idx=0)
    with torch.no_grad():
        emb.weight[0] = torch.tensor([1.0, -2.0, 3.0, 0.5])  # nn.Embedding's forward reads it as stored
    q = Int8Embedding.from_float(emb)
    assert torch.allclose(q(torch.tensor([0])), emb(torch.tensor([0])), rtol=0.01, atol=0.02)


def test_convert_only_where_the_config_says_and_report_says_why(tmp_path):
    model = Tagger()
    co.convert(model, co.Int8())
    rows = {r.name: r for r in co.report(model).rows}
    assert isinstance(model.fc, Int8Linear) and type(model.tok) is nn.Embedding
    assert "Int8(embeddings=False) leaves embeddings dense" in rows["tok"].note
    model = Tagger()
    ids = _ids()
    ref = model(ids).detach()
    co.convert(model, {"tok": co.Int8(embeddings=True), "pos": co.Int4(group_size=32, embeddings=True),
                       "*": co.Int8()})
    assert isinstance(model.tok, Int8Embedding) and isinstance(model.pos, Int4Embedding)
    rep = co.report(model)
    rows = {r.name: r for r in rep.rows}
    assert rows["tok"].format == "int8 rows" and rows["pos"].format == "int4 rows g32 asym"
    assert rep.bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    y = model(ids)
    assert _rel(y, ref) < 0.1
    path = str(tmp_path / "m.safetensors")
    co.save(model, path)
    fresh = co.load(Tagger(), path)
    assert isinstance(fresh.tok, Int8Embedding) and isinstance(fresh.pos, Int4Embedding)
    assert torch.equal(fresh(ids), y)


def test_torch_compile_and_export():
    model = co.convert(Tagger(), {"tok": co.Int8(embeddings=True), "pos": co.Int4(group_size=32, embeddings=True)})
    ids = _ids()
    want = model(ids)
    for layer, x in ((model.tok, ids), (model.pos, torch.arange(9))):  # the gathers alone: bit for bit
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))
    ep = torch.export.export(model, (ids,))
    assert torch.equal(ep.module()(ids), want)


# ------------------------------------------------------------------ tied embedding / lm_head (GPT-2)

def _gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=2000, n_positions=32, n_embd=64, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return model, transformers, cfg


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_tied_head_alone_stays_dense_and_the_model_never_grows():
    model, _, _ = _gpt2()
    rep_before = co.report(model)
    co.convert(model, co.Int8())  # embeddings=False: lm_head would be converted alone
    rep = co.report(model)
    rows = {r.name: r for r in rep.rows}
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    assert "store the shared tensor twice" in rows["lm_head"].note and "transformer.wte" in rows["lm_head"].note
    assert rep.bytes <= rep_before.bytes and rep.dense_bytes == rep_before.dense_bytes


def test_tied_pair_shares_one_int8_copy(tmp_path):
    model, transformers, cfg = _gpt2()
    ids = torch.randint(0, 2000, (2, 12))
    ref = _logits(model, ids)
    float_path = str(tmp_path / "fp32.safetensors")
    co.save(model, float_path)
    # the tables and the head only (the GPT-2 Conv1D layers convert too under "*"), so that the float
    # model holding the dequantized tables below is the exact comparison
    cfg8 = co.Int8(act="weight_only", embeddings=True)
    q = co.convert(copy.deepcopy(model), {"transformer.wte": cfg8, "transformer.wpe": cfg8, "lm_head": cfg8, "*": None})
    wte, head = q.transformer.wte, q.lm_head
    assert isinstance(head, Int8Linear) and isinstance(wte, Int8Embedding) and wte.tied_source() is head
    assert wte.weight is None and not any(k.startswith("transformer.wte.") for k in q.state_dict())
    # the tied gather reads exactly the head's int8 weight
    assert torch.equal(wte(ids), head.dequantize()[ids])
    # the same numbers as the float model holding the dequantized tables (weight-only: no activation rounding)
    deq = copy.deepcopy(model)
    with torch.no_grad():
        deq.transformer.wte.weight.copy_(head.dequantize())
        deq.transformer.wpe.weight.copy_(q.transformer.wpe.dequantize())
    got = _logits(q, ids)
    assert _rel(got, _logits(deq, ids)) < 1e-5 and _rel(got, ref) < 0.02
    rep = co.report(q)
    rows = {r.name: r for r in rep.rows}
    assert rows["transformer.wte"].bytes == 0 and "reads lm_head's compressed weight" in rows["transformer.wte"].note
    path = str(tmp_path / "int8.safetensors")
    co.save(q, path)
    file_ratio = os.path.getsize(float_path) / os.path.getsize(path)
    assert rep.ratio > 1.5 and abs(rep.ratio / file_ratio - 1) < 0.03, (rep.ratio, file_ratio)
    fresh = co.load(transformers.GPT2LMHeadModel(cfg).eval(), path)
    assert fresh.transformer.wte.tied_source() is fresh.lm_head
    assert torch.equal(_logits(fresh, ids), got)
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert other.transformer.wte.tied_source() is other.lm_head
        assert torch.equal(_logits(other, ids), got)
    # W8A8 head: within the int8 activation rounding
    dyn = co.convert(copy.deepcopy(model), co.Int8(embeddings=True))
    assert dyn.transformer.wte.tied_source() is dyn.lm_head and _rel(_logits(dyn, ids), ref) < 0.05


def test_tied_pair_under_int4_stays_dense_with_the_reason():
    model, _, _ = _gpt2()
    co.convert(model, co.Int4(group_size=32, embeddings=True))
    rows = {r.name: r for r in co.report(model).rows}
    assert type(model.lm_head) is nn.Linear and type(model.transformer.wte) is nn.Embedding
    assert "Int4 has no way to share one compressed copy" in rows["lm_head"].note
    assert isinstance(model.transformer.wpe, Int4Embedding)


def test_a_file_that_ties_to_a_missing_layer_is_refused_and_changes_nothing(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, transformers, cfg = _gpt2()
    path, bad = str(tmp_path / "m.safetensors"), str(tmp_path / "bad.safetensors")
    co.save(co.convert(model, co.Int8(embeddings=True)), path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    layers = json.loads(meta["compressops_layers"])
    assert layers["transformer.wte"]["tied_to"] == "lm_head"
    layers["transformer.wte"]["tied_to"] = "nowhere"
    save_file(load_file(path), bad, metadata={**meta, "compressops_layers": json.dumps(layers)})
    target = transformers.GPT2LMHeadModel(cfg)
    types = [type(m) for m in target.modules()]
    with pytest.raises(ValueError, match="ties layer 'transformer.wte' to 'nowhere'"):
        co.load(target, bad)
    assert [type(m) for m in target.modules()] == types
