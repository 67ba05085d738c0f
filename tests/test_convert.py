"""compressops.convert / report / save / load."""

import pytest
import torch
from torch import nn

import compressops as co
from compressops.nn import Int8Linear

from .families import EXAMPLES, FAMILY, convert_example, tiny_input, tiny_model
from .helpers import randn_nonzero


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.encoder = nn.Sequential(nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 32))
        self.classifier = nn.Linear(32, 5)

    def forward(self, img, feats):
        return self.classifier(self.encoder(feats)) + self.conv(img).mean()


def inputs():
    return randn_nonzero(2, 3, 6, 6), randn_nonzero(2, 36)


def test_single_config_converts_every_linear_and_reports_the_rest():
    model = Net()
    x = inputs()
    ref = model(*x).detach()
    out_model = co.convert(model, co.Int8())
    assert out_model is model
    assert isinstance(model.encoder[0], Int8Linear) and isinstance(model.classifier, Int8Linear)
    assert isinstance(model.conv, nn.Conv2d)
    rep = co.report(model)
    rows = {r.name: r for r in rep.rows}
    assert rows["conv"].format == "dense" and "does not support Conv2d" in rows["conv"].note
    assert rows["classifier"].format == "int8 (dynamic)"
    assert rep.ratio > 3.0
    assert "classifier" in rep.to_markdown() and "total" in str(rep)
    assert ((model(*x) - ref).norm() / ref.norm()) < 0.05


def test_pattern_mapping_first_match_wins_and_none_keeps_dense():
    model = co.convert(Net(), {"classifier": None, "encoder.0": co.Int8(act="weight_only"), "*": co.Int8()})
    assert isinstance(model.classifier, nn.Linear)
    assert model.encoder[0].act == "weight_only" and model.encoder[2].act == "dynamic"
    rows = {r.name: r for r in co.report(model).rows}
    assert "None" in rows["classifier"].note
    untouched = co.convert(Net(), {"encoder.*": co.Int8()})
    assert isinstance(untouched.classifier, nn.Linear)
    assert {r.name: r for r in co.report(untouched).rows}["classifier"].note == "no pattern matched"


def test_inplace_false_copies_and_second_convert_is_noop():
    model = Net()
    copy = co.convert(model, co.Int8(), inplace=False)
    assert isinstance(model.classifier, nn.Linear) and isinstance(copy.classifier, Int8Linear)
    packed = copy.classifier.weight_packed
    co.convert(copy, co.Int8())
    assert copy.classifier.weight_packed is packed


def test_filter_fn_and_shared_module_converted_once():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(8, 2))
    co.convert(model, co.Int8(), filter_fn=lambda m, name: m.out_features == 8)
    assert model[0] is model[2] and isinstance(model[0], Int8Linear)
    assert isinstance(model[3], nn.Linear)
    assert "filter_fn" in {r.name: r for r in co.report(model).rows}["3"].note


def test_static_calibration_and_missing_data_error():
    model = Net()
    with pytest.raises(ValueError, match="calibration_data"):
        co.convert(Net(), co.Int8(act="static"))
    batches = [inputs() for _ in range(3)]
    absmax = max(b[1].abs().max().item() for b in batches)
    co.convert(model, co.Int8(act="static"), calibration_data=batches)
    assert model.encoder[0].act_scale.item() == pytest.approx(absmax / 127, rel=1e-6)
    assert torch.isfinite(model(*inputs())).all()


def test_save_load_round_trip(tmp_path):
    model = co.convert(Net(), {"classifier": co.Int8(act="weight_only"), "*": co.Int8()})
    path = tmp_path / "m.safetensors"
    co.save(model, str(path))
    fresh = co.load(Net(), str(path))
    assert isinstance(fresh.encoder[0], Int8Linear) and fresh.classifier.act == "weight_only"
    x = inputs()
    assert torch.equal(fresh(*x), model(*x))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_save_load_round_trip_every_example(name, tmp_path):
    kind = EXAMPLES[name][1]
    model = convert_example(name)
    path = tmp_path / f"{name}.safetensors"
    co.save(model, str(path))
    fresh = co.load(tiny_model(kind), str(path)).eval()
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]
    assert any(co.configs.family_of(m).name == FAMILY[name] for m in fresh.modules()
               if isinstance(m, co.configs.compressed_types()))
    x = tiny_input(kind)
    assert torch.equal(fresh(x), model(x))
