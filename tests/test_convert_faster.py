"""convert(..., only_if_faster=True): a compressed layer stays only where it is faster than the dense
one on this machine (issue 20, "never slower"). The decisions are tested on a fake clock whose time
advances by a fixed cost per module call, so that "compressed slower" does not depend on the
machine; one test times for real and checks only the structure."""

from __future__ import annotations

import copy
import importlib
import time
import warnings

import pytest
import torch
from torch import nn

import compressops as co
from compressops import speedcheck
from compressops.configs import compressed_types
from compressops.nn import Int8Embedding, Int8Linear

convert_mod = importlib.import_module("compressops.convert")  # the module (co.convert is the function)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.Linear(48, 16)).eval()


# Fake seconds per call, by (compressed?, out_features): layer "0" compressed is 2x faster, layer
# "2" 1.5x slower, layer "3" 1.01x faster (inside the noise margin).
COSTS = {(False, 64): 2.0, (True, 64): 1.0,
         (False, 48): 2.0, (True, 48): 3.0,
         (False, 16): 1.01, (True, 16): 1.0}


class FakeClock:
    """speedcheck.clock that advances by COSTS-like costs on every module call (a global forward
    pre-hook), so that measure() sees exactly those call times."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, []

    def __call__(self) -> float:
        return self.now

    def hook(self, mod, args):
        key = (isinstance(mod, compressed_types()), getattr(mod, "out_features", getattr(mod, "num_embeddings", None)))
        if key in self.costs:
            self.now += self.costs[key]
            self.calls.append(key)


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock(COSTS)
    monkeypatch.setattr(speedcheck, "clock", clock)
    monkeypatch.setattr(speedcheck, "other_busy_seconds", lambda: None)  # no load warning from a loaded test machine
    handle = torch.nn.modules.module.register_module_forward_pre_hook(clock.hook)
    yield clock
    handle.remove()


def _rows(model):
    return {r.name: r for r in co.report(model).rows}


def test_slower_layers_stay_dense_with_the_measured_speedup_and_reason(fake_clock):
    x = torch.randn(4, 32)
    model = co.convert(_model(), co.Int8(), only_if_faster=True, example_inputs=x, progress=False)
    assert isinstance(model[0], Int8Linear) and type(model[2]) is nn.Linear and type(model[3]) is nn.Linear
    rows = _rows(model)
    assert rows["0"].speedup == pytest.approx(2.0) and rows["0"].note == "faster than dense at [4, 32]: 2.00x"
    assert rows["2"].speedup == pytest.approx(2 / 3)
    assert rows["2"].note.startswith("slower than dense at [4, 64]: 0.67x")
    assert rows["3"].speedup == pytest.approx(1.01)
    assert "noise margin" in rows["3"].note and "at [4, 48]: 1.01x" in rows["3"].note
    text = str(co.report(model))
    assert "speedup" in text.splitlines()[0] and "0.67x" in text
    # the converted layer is exactly what plain convert makes of it
    everything = co.convert(_model(), co.Int8())
    assert torch.equal(model[0](x), everything[0](x))
    same_choice = co.convert(_model(), {"0": co.Int8(), "*": None})
    assert torch.equal(model(x), same_choice(x))
    assert "speedup" not in str(co.report(same_choice)).splitlines()[0]  # the column only for a timed model
    # converting again without timing: the layers it converts now lose their timing, the earlier one keeps it
    co.convert(model, co.Int8())
    rows = _rows(model)
    assert isinstance(model[2], Int8Linear) and rows["2"].speedup is None and rows["0"].speedup == pytest.approx(2.0)


def test_timing_rounds_alternate_and_stay_within_the_budget(fake_clock, monkeypatch):
    monkeypatch.setattr(speedcheck, "LAYER_BUDGET_S", 20.0)
    dense = nn.Linear(32, 64)
    compressed = Int8Linear.from_float(dense, co.Int8())
    found = speedcheck.measure(dense, compressed, (torch.randn(2, 32),), {})
    # 3 fake seconds a round: the 20 s budget is spent after 7 rounds
    assert found.rounds == 7 and found.dense_s == 2.0 and found.compressed_s == 1.0 and found.shape == (2, 32)
    timed = fake_clock.calls[2 * speedcheck.WARMUP_CALLS:]
    assert timed == [(False, 64), (True, 64), (True, 64), (False, 64)] * 3 + [(False, 64), (True, 64)]
    # a layer slower than the budget still gets MIN_ROUNDS rounds, and only those
    monkeypatch.setattr(speedcheck, "LAYER_BUDGET_S", 0.5)
    assert speedcheck.measure(dense, compressed, (torch.randn(2, 32),), {}).rounds == speedcheck.MIN_ROUNDS


def test_bad_input_names_example_inputs():
    model = _model()
    with pytest.raises(ValueError, match="example_inputs"):
        co.convert(model, co.Int8(), only_if_faster=True)
    with pytest.raises(ValueError, match="only_if_faster"):
        co.convert(model, co.Int8(), example_inputs=torch.randn(2, 32))
    for bad in ("text", [torch.randn(2, 32)], 3, {0: torch.randn(2, 32)}):
        with pytest.raises(TypeError, match="example_inputs"):
            co.convert(model, co.Int8(), only_if_faster=True, example_inputs=bad)
    assert all(type(m) is nn.Linear for m in model if not isinstance(m, nn.ReLU))  # refused before any change


class Keywords(nn.Module):
    """A forward with keyword arguments and a layer it never calls."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(32, 64), nn.Linear(64, 48), nn.Linear(48, 16)

    def forward(self, x, *, scale=1.0):
        return self.b(self.a(x) * scale)


def test_tuple_and_dict_inputs_and_a_layer_never_called(fake_clock):
    x = torch.randn(3, 32)
    for inputs in ({"x": x, "scale": 2.0}, (x,)):
        model = co.convert(Keywords().eval(), co.Int8(), only_if_faster=True, example_inputs=inputs, progress=False)
        rows = _rows(model)
        assert isinstance(model.a, Int8Linear) and type(model.b) is nn.Linear
        assert rows["a"].note == "faster than dense at [3, 32]: 2.00x"
        assert type(model.unused) is nn.Linear and rows["unused"].speedup is None
        assert "not called while the model ran example_inputs" in rows["unused"].note


def test_patterns_filter_fn_copy_and_calibration(fake_clock):
    torch.manual_seed(1)
    original = _model()
    calib = [torch.randn(8, 32) for _ in range(2)]
    x = torch.randn(4, 32)
    static = co.Int8(act="static")
    config = {"0": static, "2": static, "3": None}
    model = co.convert(original, config, calibration_data=calib, inplace=False, only_if_faster=True,
                       example_inputs=x, filter_fn=lambda m, name: name != "2", progress=False)
    assert all(type(m) is nn.Linear for m in original if not isinstance(m, nn.ReLU))
    assert not getattr(original, speedcheck.SPEED_ATTR, {})
    rows = _rows(model)
    assert isinstance(model[0], Int8Linear) and rows["0"].speedup == pytest.approx(2.0)
    assert rows["2"].note == "filter_fn returned False" and rows["2"].speedup is None
    assert "maps it to None" in rows["3"].note and rows["3"].speedup is None
    # calibrated as without only_if_faster: the same static scale, the same output
    plain = co.convert(copy.deepcopy(original), config, calibration_data=calib, filter_fn=lambda m, name: name != "2")
    assert torch.equal(model(x), plain(x))


def test_a_module_under_two_names_and_a_tied_pair(fake_clock):
    shared = nn.Linear(32, 48)
    twice = nn.Sequential(shared, nn.ReLU(), nn.Linear(48, 32), shared).eval()
    fake_clock.costs = {**COSTS, (False, 32): 2.0, (True, 32): 1.0}
    co.convert(twice, co.Int8(), only_if_faster=True, example_inputs=torch.randn(2, 32), progress=False)
    rows = _rows(twice)
    assert twice[0] is twice[3] and type(twice[0]) is nn.Linear and isinstance(twice[2], Int8Linear)
    assert rows["0"].note.startswith("slower than dense at [2, 32]: 0.67x")

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(40, 16), nn.Linear(16, 40, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    # the head is faster compressed, the table slower: both stay dense (one alone would store the weight twice)
    fake_clock.costs = {(False, 40): 2.0, (True, 40): 1.0}
    model = Tied().eval()
    slow_gather = {"hits": 0}

    def slower(mod, args):
        if isinstance(mod, Int8Embedding):
            fake_clock.now += 5.0
            slow_gather["hits"] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(slower)
    try:
        co.convert(model, co.Int8(embeddings=True, act="weight_only"), only_if_faster=True,
                   example_inputs=torch.randint(0, 40, (2, 5)), progress=False)
    finally:
        handle.remove()
    rows = _rows(model)
    assert slow_gather["hits"] > 0 and type(model.emb) is nn.Embedding and type(model.head) is nn.Linear
    assert rows["emb"].note.startswith("slower than dense at [2, 5]")
    assert rows["head"].note.startswith("tied to 'emb', which stays dense") and rows["head"].speedup > 1


def test_save_and_load_round_trip_a_partly_converted_model(fake_clock, tmp_path):
    x = torch.randn(4, 32)
    model = co.convert(_model(), co.Int8(), only_if_faster=True, example_inputs=x, progress=False)
    path = str(tmp_path / "m.safetensors")
    co.save(model, path)
    fresh = co.load(_model(), path)
    assert [type(m) for m in fresh] == [type(m) for m in model]
    assert torch.equal(fresh(x), model(x))


def test_the_progress_bar_covers_the_timing(capsys, monkeypatch):
    def slow_measure(dense, compressed, args, kwargs, budget_s=None):
        time.sleep(0.1)
        return speedcheck.Measurement(1.0, 0.5, (1,), 3)

    monkeypatch.setattr(speedcheck, "measure", slow_measure)
    monkeypatch.setattr(speedcheck, "other_busy_seconds", lambda: None)
    monkeypatch.setattr(convert_mod, "PROGRESS_DELAY_S", 0.15)
    co.convert(_model(), co.Int8(), only_if_faster=True, example_inputs=torch.randn(2, 32))
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "compressops.convert" in line]
    assert lines and "3/3" in lines[-1]


def test_real_timing_gives_every_candidate_a_speedup(monkeypatch):
    monkeypatch.setattr(speedcheck, "LAYER_BUDGET_S", 0.003)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.Linear(64, 8), nn.LayerNorm(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a loaded test machine: the decisions may be noise
        model = co.convert(model, co.Int8(), only_if_faster=True, example_inputs=torch.randn(16, 64), progress=False)
    rows = co.report(model).rows
    candidates = [r for r in rows if r.module in ("Linear", "Int8Linear")]
    assert len(candidates) == 3
    for r in candidates:
        assert r.speedup is not None and r.speedup > 0
        if r.format == "dense":
            assert "than dense at [16, " in r.note and r.speedup < 1 + speedcheck.NOISE_MARGIN
        else:
            assert r.note.startswith("faster than dense at [16, ") and r.speedup >= 1 + speedcheck.NOISE_MARGIN
    assert next(r for r in rows if r.module == "LayerNorm").speedup is None


def test_gpt2_conv1d_layers_are_timed_as_the_module_they_replace(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(speedcheck, "LAYER_BUDGET_S", 0.003)
    cfg = transformers.GPT2Config(vocab_size=500, n_positions=32, n_embd=64, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 500, (2, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a loaded test machine: the decisions may be noise
        co.convert(model, co.Int8(), only_if_faster=True, example_inputs={"input_ids": ids}, progress=False)
    rows = _rows(model)
    conv1d = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
              "transformer.h.0.mlp.c_proj"]
    for name in conv1d:
        assert rows[name].speedup is not None and rows[name].module in ("Conv1D", "Int8Linear")
        assert ("at [2, 12, 64]" in rows[name].note) != (name == "transformer.h.0.mlp.c_proj")
    assert "at [2, 12, 256]" in rows["transformer.h.0.mlp.c_proj"].note
    assert rows["lm_head"].speedup is None and "tied" in rows["lm_head"].note
    assert model(ids).logits.shape == (2, 12, 500)
