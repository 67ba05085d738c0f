"""One input rule for every family (issue 18): x is float32, bfloat16 or float16; float64 raises the
same clear error from every compressed module, native kernel or reference, instead of an error about
an out_dtype nobody passed, or a silent cast."""

import pytest
import torch

import compressops as co

from .families import EXAMPLES, convert_example, tiny_input


def _first_layer_and_its_input(name):
    """The example's first compressed layer and the float32 input it sees in the model."""
    _, kind = EXAMPLES[name]
    model = convert_example(name)
    layer = next(m for m in model.modules() if isinstance(m, co.configs.compressed_types()))
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(tiny_input(kind))
    handle.remove()
    return layer, seen[0]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float64_input_raises_naming_x(name):
    layer, x = _first_layer_and_its_input(name)
    with pytest.raises(ValueError, match=r"x must be float32, bfloat16 or float16, got torch.float64"):
        layer(x.double())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_float32_bfloat16_float16_inputs_run(name):
    layer, x = _first_layer_and_its_input(name)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = layer(x.to(dtype))
        assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_meta_input_to_a_cpu_layer_raises_naming_both_devices(name):
    """A meta x with CPU weights used to return a meta tensor from a CPU layer (the dispatcher picks
    the meta kernel for the whole call); every op now requires its tensors on x's device."""
    layer, x = _first_layer_and_its_input(name)
    # binary without activation binarization (w1a32) runs F.conv2d, whose own check names both devices
    with pytest.raises((ValueError, RuntimeError), match=r"must be on x(_packed)?'s device \(meta\), got cpu|"
                                                         r"Tensor on device cpu is not on the expected device meta"):
        layer(x.to("meta"))
    # on one device, meta included, the layer runs (a fake kernel: shapes only)
    want = layer(x).shape
    y = layer.to("meta")(x.to("meta"))
    assert y.device.type == "meta" and y.shape == want


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fake_tensors_keep_passing_the_device_rule(name):
    """Fake tensors report the device of the tensors they stand for, so compiled graphs still trace."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer, x = _first_layer_and_its_input(name)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        y = layer(mode.from_tensor(x))
    assert y.device.type == "cpu" and y.shape == layer(x).shape


def _op_calls():
    """{op: (args of a valid call, names of its tensor arguments)} for every op with more than one tensor."""
    from compressops.formats import csr as fcsr
    from compressops.formats import int4 as f4
    from compressops.formats import sparse24 as s24

    lin = torch.nn.Linear(64, 8)
    x = torch.randn(3, 64)
    b = torch.randn(8)
    i8 = co.nn.Int8Linear.from_float(lin)
    qw, s, z = f4.quantize_weight(lin.weight, 32)
    values, meta = s24.compress(lin.weight.detach())
    q24, scale24 = s24.quantize_values(values)
    crow, col, vals = fcsr.compress(lin.weight.detach(), fcsr.magnitude_mask(lin.weight, 0.5))
    pq = co.nn.PQLinear.from_float(lin, co.PQ(num_centroids=16, subvector_dim=4))
    bl = co.nn.BinaryLinear.from_float(lin)
    xp = co.ops.binary_pack_activation(x)
    return {
        "int8_quantize_activation": ((x, torch.tensor(0.05)), ("x", "act_scale")),
        "int8_linear": ((x, i8.weight_packed, i8.weight_scale, b), ("x", "w_packed", "w_scale", "bias")),
        "int8_weight_only_linear": ((x, i8.weight_packed, i8.weight_scale, b), ("x", "w_packed", "w_scale", "bias")),
        "int4_pack_weight": ((qw, s, z, 64, 32), ("qweight", "scales", "zeros")),
        "int4_linear": ((x, co.ops.int4_pack_weight(qw, s, z, 64, 32), b), ("x", "w_packed", "bias")),
        "sparse24_pack": ((values, meta, 64), ("values", "meta")),
        "sparse24_linear": ((x, co.ops.sparse24_pack(values, meta, 64), b), ("x", "packed", "bias")),
        "sparse24_int8_linear": ((x, co.ops.sparse24_pack(q24, meta, 64), scale24, b),
                                 ("x", "packed", "w_scale", "bias")),
        "csr_pack": ((crow, col, 64), ("crow", "col")),
        "csr_linear": ((x, co.ops.csr_pack(crow, col, 64), vals, b), ("x", "packed", "values", "bias")),
        "pq_pack": ((pq.codes, pq.codebooks, 64), ("codes", "codebooks")),
        "pq_linear": ((x, pq.packed, b), ("x", "packed", "bias")),
        "half_linear": ((x, co.ops.half_pack_weight(lin.weight.detach().half()), b), ("x", "packed", "bias")),
        "binary_linear": ((xp, bl.weight_packed, bl.alpha, b), ("x_packed", "w_packed", "alpha", "bias")),
    }


OPS_WITH_TENSORS = ["binary_linear", "csr_linear", "csr_pack", "half_linear", "int4_linear", "int4_pack_weight",
                    "int8_linear", "int8_quantize_activation", "int8_weight_only_linear", "pq_linear", "pq_pack",
                    "sparse24_int8_linear", "sparse24_linear", "sparse24_pack"]


@pytest.mark.parametrize("op", OPS_WITH_TENSORS)
def test_every_op_requires_its_tensors_on_one_device(op):
    """Each tensor argument in turn on meta, the rest on the CPU: native op (the dispatcher sends the
    call to the meta kernel, i.e. the fake) and reference raise the same message naming both."""
    from compressops import reference

    from .helpers import call_both

    calls = _op_calls()
    assert sorted(calls) == OPS_WITH_TENSORS
    args, names = calls[op]
    ref_name = names[0]
    for i, name in enumerate(names):
        moved = [a.to("meta") if j == i else a for j, a in enumerate(args)]
        native, ref = call_both(getattr(co.ops, op), getattr(reference, op), *moved)
        assert native == ref
        if i == 0:
            assert native == f"{op}: {names[1]} must be on {ref_name}'s device (meta), got cpu"
        else:
            assert native == f"{op}: {name} must be on {ref_name}'s device (cpu), got meta"
