"""Conversion coverage on real architectures (random weights, nothing downloaded): every format
converts what it supports in torchvision and timm models, leaves the rest dense with a reason, and
the converted model runs and stays close to the float model where the format is near-lossless."""

import copy

import pytest
import torch
from torch import nn

import compressops as co

from .families import EXAMPLES, FIRST

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _resnet18():
    return torchvision.models.resnet18(weights=None, num_classes=10), torch.randn(2, 3, 64, 64)


def _mobilenet_v3():
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=10), torch.randn(2, 3, 64, 64)


def _vit_tiny():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64), \
        torch.randn(2, 3, 64, 64)


def _convnext_atto():
    return timm.create_model("convnext_atto", pretrained=False, num_classes=10), torch.randn(2, 3, 64, 64)


MODELS = {"resnet18": _resnet18, "mobilenet_v3_small": _mobilenet_v3, "vit_tiny": _vit_tiny,
          "convnext_atto": _convnext_atto}
# family -> bound on the logits' relative error vs float (families not listed: no bound)
MAX_ERR = {"int8": 0.05, "int4": 0.3}
# (family, model) -> (module class, how many of them the converted model holds)
EXPECTED_COUNT = {("binary", "resnet18"): ("BinaryConv2d", 19)}  # 20 convs, the first stays float


@pytest.mark.parametrize("family", sorted(FIRST))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_convert_real_architecture(model_name, family):
    torch.manual_seed(0)
    model, x = MODELS[model_name]()
    model.eval()
    config, max_err = EXAMPLES[FIRST[family]][0], MAX_ERR.get(family)
    with torch.inference_mode():
        ref = model(x)
    cal = x if config.needs_calibration else None
    q = co.convert(copy.deepcopy(model), config, calibration_data=cal, progress=False).eval()
    rep = co.report(q)
    converted = [r for r in rep.rows if r.format != "dense"]
    dense = [r for r in rep.rows if r.format == "dense"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert converted or not linears, f"{family} converted nothing in {model_name}"
    assert all(r.note for r in dense), "every layer left dense says why"
    if config.model_filter(model) is not None:  # e.g. keep_first_last: the first and last layer stay float
        assert rep.rows[0].format == "dense" and rep.rows[-1].format == "dense"
        assert config.model_filter_reason in {rep.rows[0].note, rep.rows[-1].note}
    if (family, model_name) in EXPECTED_COUNT:
        cls_name, count = EXPECTED_COUNT[family, model_name]
        assert sum(r.module == cls_name for r in converted) == count
    with torch.inference_mode():
        y = q(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    if max_err is not None:  # relative error: random-weight logits can be tiny (mobilenet: ~1e-10)
        err = float((y.double() - ref.double()).norm() / ref.double().norm())
        assert err <= max_err, err
