"""Conversion coverage on real architectures (random weights, nothing downloaded): every format
converts what it supports in torchvision and timm models, leaves the rest dense with a reason, and
the converted model runs and stays close to the float model where the format is near-lossless."""

import copy

import pytest
import torch
from torch import nn

import compressops as co

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
CONFIGS = {
    "int8": (co.Int8(), 0.05),  # (config, bound on the logits' relative error vs float; None: no bound)
    "int4": (co.Int4(group_size=32), 0.3),
    "sparse24": (co.Sparse24(), None),
    "csr": (co.CSR(sparsity=0.5), None),
    "pq": (co.PQ(num_centroids=16, subvector_dim=2, max_iter=3), None),
    "binary": (co.Binary(), None),
}


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_convert_real_architecture(model_name, config_name):
    torch.manual_seed(0)
    model, x = MODELS[model_name]()
    model.eval()
    config, max_err = CONFIGS[config_name]
    with torch.inference_mode():
        ref = model(x)
    q = co.convert(copy.deepcopy(model), config, progress=False).eval()
    rep = co.report(q)
    converted = [r for r in rep.rows if r.format != "dense"]
    dense = [r for r in rep.rows if r.format == "dense"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert converted or not linears, f"{config_name} converted nothing in {model_name}"
    assert all(r.note for r in dense), "every layer left dense says why"
    if isinstance(config, co.Binary):  # keep_first_last: the first and last layer stay float
        assert rep.rows[0].format == "dense" and rep.rows[-1].format == "dense"
        if model_name == "resnet18":
            assert sum(r.module == "BinaryConv2d" for r in converted) == 19  # 20 convs, the first stays float
    with torch.inference_mode():
        y = q(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    if max_err is not None:  # relative error: random-weight logits can be tiny (mobilenet: ~1e-10)
        err = float((y.double() - ref.double()).norm() / ref.double().norm())
        assert err <= max_err, err
