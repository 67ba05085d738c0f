"""BinaryChain and fuse_binary_chains: consecutive binary convs with packed activations in between."""

import copy
import threading

import pytest
import torch
from torch import nn

import compressops as co
from compressops import ops
from compressops.bnn import fuse_binary_chains
from compressops.nn import BinaryChain, BinaryConv2d
from compressops.nn.binary_chain import fold_batchnorm, sign_preserving

from .helpers import expected_kernel_level, isa_params, randn_nonzero, requires_native


def batchnorm(c, affine=True):
    bn = nn.BatchNorm2d(c, affine=affine)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    if affine:
        bn.weight.data.normal_()  # some gamma < 0: folded alphas change sign
        bn.bias.data.normal_()
    return bn.eval()


def bconv(cin, cout, k, stride=1, padding=0, bias=True):
    return BinaryConv2d.from_float(nn.Conv2d(cin, cout, k, stride, padding, bias=bias)).eval()


def float_model():
    """A small BNN body: a float stem, four binary convs (one run of three with BN/Hardtanh/Tanh in
    between, then ReLU, which breaks the run), a float head."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), batchnorm(64), nn.Hardtanh(),
        nn.Conv2d(64, 96, 3, padding=1), batchnorm(96), nn.Hardtanh(),
        nn.Conv2d(96, 130, 3, stride=2, padding=1), batchnorm(130), nn.Tanh(),
        nn.Conv2d(130, 70, 1), batchnorm(70), nn.ReLU(),
        nn.Conv2d(70, 70, 3, padding=1), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(70, 10),
    ).eval()


def binary_model():
    return co.convert(float_model(), co.Binary()).eval()


def test_sign_preserving_rules():
    assert sign_preserving(nn.Hardtanh()) and sign_preserving(nn.Identity()) and sign_preserving(nn.Tanh())
    assert sign_preserving(nn.Dropout()) and sign_preserving(nn.Hardtanh(-0.5, 0.0))
    assert not sign_preserving(nn.ReLU()) and not sign_preserving(nn.ReLU6())  # ReLU6 is a Hardtanh(0, 6)
    assert not sign_preserving(nn.Hardtanh(0.0, 1.0)) and not sign_preserving(nn.Sigmoid())


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_equals_bn_after_conv(affine, bias):
    conv = bconv(70, 33, 3, padding=1, bias=bias)
    bn = batchnorm(33, affine)
    conv0 = copy.deepcopy(conv)
    folded = fold_batchnorm(conv, bn)
    x = randn_nonzero(2, 70, 6, 5)
    with torch.no_grad():
        expect = bn(conv(x))
        got = folded(x)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv.alpha, conv0.alpha) and (bias == (conv.bias is not None))  # input untouched
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(conv, nn.BatchNorm2d(33, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="34 features"):
        fold_batchnorm(conv, batchnorm(34))


def test_fold_batchnorm_uses_the_latent_weight_of_a_trainable_conv():
    conv = BinaryConv2d.from_float(nn.Conv2d(64, 16, 3, padding=1), trainable=True)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(torch.randn_like(conv.weight))  # an optimizer step: bits not repacked yet
    bn = batchnorm(16)
    frozen = copy.deepcopy(conv)
    frozen.freeze()
    x = randn_nonzero(2, 64, 5, 5)
    with torch.no_grad():
        expect = bn(frozen.eval()(x))
        got = fold_batchnorm(conv, bn)(x)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", isa_params())
def test_chain_equals_unfused_layers_on_every_level(level):
    c1, c2, c3 = bconv(64, 96, 3, padding=1), bconv(96, 130, 3, stride=2, padding=1), bconv(130, 70, 1)
    bn1, bn2, bn3 = batchnorm(96), batchnorm(130), batchnorm(70)
    mods = [c1, bn1, nn.Hardtanh(), c2, bn2, nn.Tanh(), nn.Dropout().eval(), c3, bn3]
    chain = BinaryChain.from_modules(mods)
    assert len(chain.layers) == 3
    x = randn_nonzero(3, 64, 11, 9)
    folded = [fold_batchnorm(c, b) for c, b in ((c1, bn1), (c2, bn2), (c3, bn3))]
    with co.cpu_isa(level):
        y = chain(x)
        expect_level = expected_kernel_level("binary_conv2d_packed", level)
        assert torch.ops.compressops._last_kernel_isa("binary_conv2d_packed") == expect_level
        # the same folded layers with float tensors between them: bit for bit, since the packed
        # op equals packing the float op's output
        h = x
        for f in folded:
            h = f(h)
    assert torch.equal(y, h)
    assert y.shape == (3, 70, 6, 5) and y.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        unfused = nn.Sequential(*mods)(x)
    torch.testing.assert_close(y, unfused, rtol=1e-5, atol=1e-5)


def test_fuse_binary_chains_on_a_converted_model():
    model = binary_model()
    before = copy.deepcopy(model.state_dict())
    fused = fuse_binary_chains(model)
    chains = [m for m in fused.modules() if isinstance(m, BinaryChain)]
    assert len(chains) == 1 and len(chains[0].layers) == 3  # the ReLU keeps conv 12 out of the run
    assert isinstance(fused._modules["12"], BinaryConv2d) and isinstance(fused._modules["11"], nn.ReLU)
    assert list(fused._modules)[:5] == ["0", "1", "2", "3", "11"]  # keys of the untouched modules stay
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # inplace=False
    x = randn_nonzero(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
    # nested Sequentials are fused too; inplace=True returns the same object
    wrapper = nn.Module()
    wrapper.body = binary_model()
    wrapper.eval()
    assert fuse_binary_chains(wrapper, inplace=True) is wrapper
    assert any(isinstance(m, BinaryChain) for m in wrapper.body)


def test_fuse_leaves_non_fusible_runs_alone():
    lone = nn.Sequential(bconv(8, 8, 3, padding=1), nn.Hardtanh(), nn.ReLU(), bconv(8, 8, 3, padding=1)).eval()
    assert not any(isinstance(m, BinaryChain) for m in fuse_binary_chains(lone).modules())
    real_act = BinaryConv2d.from_float(nn.Conv2d(8, 8, 1), co.Binary(binarize_activations=False)).eval()
    mixed = nn.Sequential(bconv(8, 8, 1), real_act).eval()
    assert not any(isinstance(m, BinaryChain) for m in fuse_binary_chains(mixed).modules())
    # a trailing activation stays outside the chain; a BN after an activation cannot be folded
    tail = nn.Sequential(bconv(8, 8, 1), nn.Hardtanh(), bconv(8, 8, 1), nn.Hardtanh(), batchnorm(8)).eval()
    fused = fuse_binary_chains(tail)
    assert isinstance(fused[0], BinaryChain) and isinstance(fused._modules["3"], nn.Hardtanh)
    assert isinstance(fused._modules["4"], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="training mode"):
        fuse_binary_chains(binary_model().train())


def test_from_modules_errors():
    c = bconv(8, 8, 1)
    with pytest.raises(ValueError, match="module 0"):
        BinaryChain.from_modules([batchnorm(8), c])
    with pytest.raises(ValueError, match="ends with an activation"):
        BinaryChain.from_modules([c, nn.Hardtanh()])
    with pytest.raises(ValueError, match="module 1 .ReLU"):
        BinaryChain.from_modules([c, nn.ReLU(), c])
    with pytest.raises(ValueError, match="training mode"):
        BinaryChain.from_modules([c, nn.BatchNorm2d(8), c])
    with pytest.raises(ValueError, match="takes 9 channels"):
        BinaryChain([c, bconv(9, 8, 1)])
    real_act = BinaryConv2d.from_float(nn.Conv2d(8, 8, 1), co.Binary(binarize_activations=False))
    with pytest.raises(ValueError, match="binarize_activations=False"):
        BinaryChain([c, real_act])
    with pytest.raises(TypeError, match="expected BinaryConv2d"):
        BinaryChain([c, nn.Conv2d(8, 8, 1)])


@requires_native
def test_dtypes_layouts_empty_modes_and_bad_input():
    chain = BinaryChain.from_modules([bconv(65, 64, 3, padding=1), batchnorm(64), bconv(64, 7, 3, stride=2)])
    x = randn_nonzero(2, 65, 9, 12)
    ref = chain(x)
    x0 = x.clone()
    assert torch.equal(chain(x.contiguous(memory_format=torch.channels_last)), ref)
    assert torch.equal(x, x0)
    assert chain(x.bfloat16()).dtype == torch.bfloat16
    wide = randn_nonzero(2, 65, 9, 24)
    assert torch.equal(chain(wide[..., ::2]), chain(wide[..., ::2].contiguous()))  # non-contiguous
    assert chain(torch.empty(0, 65, 9, 12)).shape == (0, 7, 4, 5)
    assert torch.equal(chain(x[1]), ref[1])  # unbatched [C, H, W], as BinaryConv2d takes it
    with torch.inference_mode():
        assert torch.equal(chain(x), ref)
    with pytest.raises(ValueError, match=r"shape \[N, 65, H, W\]"):
        chain(randn_nonzero(2, 66, 9, 12))  # the same word count: must not run silently
    with pytest.raises(ValueError, match="float"):
        chain(torch.ones(2, 65, 9, 12, dtype=torch.int64))
    chain.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        chain(x)
    with torch.no_grad():
        assert torch.equal(chain(x), ref)


@requires_native
def test_state_dict_round_trip_script_compile_export():
    chain = BinaryChain.from_modules([bconv(16, 32, 3, padding=1), batchnorm(32), nn.Hardtanh(),
                                      bconv(32, 8, 3, padding=1, bias=False)])
    x = randn_nonzero(2, 16, 7, 7)
    ref = chain(x)
    fresh = BinaryChain([BinaryConv2d(16, 32, 3, padding=1), BinaryConv2d(32, 8, 3, padding=1, bias=True)])
    sd = chain.state_dict()
    sd["head.bias"] = torch.zeros(8)  # the skeleton's head has a bias; zero equals none
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), ref)
    scripted = torch.jit.script(chain)
    assert torch.equal(scripted(x), ref)
    assert torch.equal(torch.compile(chain, fullgraph=True)(x), ref)
    ep = torch.export.export(chain, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("binary_conv2d_packed" in t for t in targets)
    x2 = randn_nonzero(5, 16, 7, 7)
    assert torch.equal(ep.module()(x2), chain(x2))


@requires_native
def test_threads_share_one_chain():
    chain = BinaryChain.from_modules([bconv(64, 64, 3, padding=1), batchnorm(64), bconv(64, 64, 3, padding=1)])
    xs = [randn_nonzero(1, 64, 10, 10) for _ in range(4)]
    expect = [chain(x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            got[i] = chain(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, e) for g, e in zip(got, expect))


def test_packed_op_is_what_the_chain_calls():
    # the chain's intermediate is exactly ops.binary_conv2d_packed of the previous packed tensor
    c1, c2 = bconv(64, 64, 3, padding=1), bconv(64, 10, 1)
    chain = BinaryChain([c1, c2])
    x = randn_nonzero(1, 64, 5, 5)
    xp = ops.binary_pack_activation(x)
    mid = ops.binary_conv2d_packed(xp, c1.weight_packed, c1.alpha, c1.bias, c1.stride, c1.padding)
    y = ops.binary_conv2d(mid, c2.weight_packed, c2.alpha, c2.bias, c2.stride, c2.padding)
    assert torch.equal(chain(x), y)
    # the chain's layers hold their packs only (no float signs, no second copy of the bits)
    for layer in chain.layers:
        assert layer.weight_signs.numel() == 0
        assert layer.weight_bits.untyped_storage().data_ptr() == layer.weight_packed.untyped_storage().data_ptr()
