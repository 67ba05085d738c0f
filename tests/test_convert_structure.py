"""convert leaves a layer dense when compressing it would change what the model computes: a
subclass with its own forward, or a child whose parent reads its weight directly; and it keeps
parents with fused fast paths (torch's Transformer encoder) computing through their compressed
children (issue 18)."""

import pytest
import torch
from torch import nn

import compressops as co

from .families import EXAMPLES, FIRST
from .helpers import randn_nonzero

# one example a family (the structure, not the format, is under test)
LINEAR_EXAMPLES = sorted(n for n in FIRST.values()
                         if EXAMPLES[n][1] == "linear" and not EXAMPLES[n][0].needs_calibration)


class AffineLinear(nn.Linear):
    """Computes 2 * linear(x) + 1: a compressed nn.Linear in its place would drop the affine part."""

    def forward(self, x):
        return 2 * super().forward(x) + 1


class NamedLinear(nn.Linear):
    """A subclass that only adds a name: it computes what nn.Linear computes."""

    label = "proj"


class OptedIn(AffineLinear):
    compressops_convert = True


def _skipped(model):
    return {r.name: r.note for r in co.report(model).rows if r.format == "dense"}


def test_subclass_with_its_own_forward_stays_dense_with_the_reason():
    model = nn.Sequential(AffineLinear(32, 16), NamedLinear(16, 16), nn.Linear(16, 8))
    x = randn_nonzero(3, 32)
    ref = model(x)
    co.convert(model, co.Int8())
    assert type(model[0]) is AffineLinear
    assert not isinstance(model[1], nn.Linear) and not isinstance(model[2], nn.Linear)
    assert "AffineLinear subclasses Linear with its own forward" in _skipped(model)["0"]
    y = model(x)
    assert (y - ref).abs().max() <= 0.05 * ref.abs().max()


def test_subclass_opts_in():
    model = nn.Sequential(OptedIn(32, 16))
    co.convert(model, co.Int8())
    assert not isinstance(model[0], nn.Linear)


@pytest.mark.parametrize("name", LINEAR_EXAMPLES)
def test_transformer_encoder_converts_and_runs_in_every_mode(name):
    """MultiheadAttention reads out_proj.weight itself: out_proj stays dense, with the reason; the
    feed-forward linears convert and the layer runs (no fused fast path reads their weights)."""
    config, _ = EXAMPLES[name]
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2,
                                enable_nested_tensor=True).eval()
    x = randn_nonzero(2, 5, 64)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        ref = enc(x)
        ref_masked = enc(x, src_key_padding_mask=mask)
    co.convert(enc, config)
    skipped = _skipped(enc)
    for i in range(2):
        reason = skipped[f"layers.{i}.self_attn.out_proj"]
        assert "its parent MultiheadAttention reads out_proj.weight directly" in reason
        assert f"layers.{i}.linear1" not in skipped and f"layers.{i}.linear2" not in skipped
    assert not isinstance(enc.layers[0].linear1, nn.Linear)
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            y = enc(x)
            y_masked = enc(x, src_key_padding_mask=mask)
        assert torch.isfinite(y).all()
        # the formats' own error on a 2-layer encoder: loose, but a dropped or wrong layer is O(1)
        assert (y - ref).abs().max() <= 0.5 * ref.abs().max()
        keep = ~mask  # the nested-tensor path of the float model zeroes padded positions
        assert (y_masked - ref_masked)[keep].abs().max() <= 0.5 * ref_masked[keep].abs().max()
