"""The embedding gathers (int8_embedding, int8_embedding_packed, int4_embedding): bit-exact against
the reference on every level, any index shape and dtype, bad indices and arguments raising the same
message natively and in the reference, opcheck."""

import pytest
import torch

import compressops as co
from compressops import reference as ref
from compressops.formats import embedding as fe

from .helpers import NATIVE, OPCHECK_UTILS, expected_kernel_level, isa_params, randn_nonzero

V, D = 37, 45  # odd sizes: D is no multiple of the pack's 4 or of any group


def _int8_table(v=V, d=D):
    return fe.quantize_int8(randn_nonzero(v, d))


def _int4_table(v=V, d=D, group=32, symmetric=False):
    return fe.quantize_int4(randn_nonzero(v, d), group, symmetric)


def _indices(shape, dtype=torch.int64, v=V):
    return torch.randint(0, v, shape, dtype=dtype)


def _calls(indices, out_dtype=None):
    """(op name, native call, reference call) for the three gathers on fresh tables."""
    w, s = _int8_table()
    packed = co.ops.int8_pack_weight(w)
    qw, sc, z = _int4_table()
    qs, ss, _ = _int4_table(group=64, symmetric=True)
    return [
        ("int8_embedding", lambda: co.ops.int8_embedding(indices, w, s, out_dtype=out_dtype),
         lambda: ref.int8_embedding(indices, w, s, out_dtype=out_dtype)),
        ("int8_embedding_packed", lambda: co.ops.int8_embedding_packed(indices, packed, s, D, out_dtype=out_dtype),
         lambda: ref.int8_embedding_packed(indices, packed, s, D, out_dtype=out_dtype)),
        ("int4_embedding", lambda: co.ops.int4_embedding(indices, qw, sc, z, D, out_dtype=out_dtype),
         lambda: ref.int4_embedding(indices, qw, sc, z, D, out_dtype=out_dtype)),
        ("int4_embedding", lambda: co.ops.int4_embedding(indices, qs, ss, None, D, out_dtype=out_dtype),
         lambda: ref.int4_embedding(indices, qs, ss, None, D, out_dtype=out_dtype)),
    ]


@pytest.mark.parametrize("level", isa_params())
def test_every_level_bit_exact_against_the_reference(level):
    indices = _indices((5, 7))
    for op, native, reference in _calls(indices):
        with co.cpu_isa(level):
            y = native()
            ran = torch.ops.compressops._last_kernel_isa(op)
        assert y.dtype == torch.float32 and y.shape == (5, 7, D)
        assert torch.equal(y, reference()), op
        assert ran == expected_kernel_level(op, level)
    w, s = _int8_table()  # the packed gather reads the same values as the row-major one
    assert torch.equal(co.ops.int8_embedding_packed(indices, co.ops.int8_pack_weight(w), s, D),
                       co.ops.int8_embedding(indices, w, s))


@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 0, 2), (2, 3, 4), (257,)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16, torch.float16])
def test_shapes_index_dtypes_and_out_dtypes(shape, index_dtype, out_dtype):
    indices = _indices(shape, index_dtype)
    for op, native, reference in _calls(indices, out_dtype):
        y = native()
        assert y.shape == (*shape, D) and y.dtype == (out_dtype or torch.float32), op
        assert torch.equal(y, reference()), op


def test_values_are_the_dequantized_rows_and_non_contiguous_indices():
    w, s = _int8_table()
    idx = _indices((6, 4))[:, ::2]
    assert torch.equal(co.ops.int8_embedding(idx, w, s), fe.dequantize_int8(w, s)[idx])
    qw, sc, z = _int4_table(group=32)
    assert torch.equal(co.ops.int4_embedding(idx, qw, sc, z, D), fe.dequantize_int4(qw, sc, z, D)[idx])
    # rows one pack-block apart (16) and the last row: the blocked gather's row arithmetic
    w, s = _int8_table(v=33, d=9)
    rows = torch.tensor([0, 15, 16, 31, 32])
    assert torch.equal(co.ops.int8_embedding_packed(rows, co.ops.int8_pack_weight(w), s, 9),
                       fe.dequantize_int8(w, s)[rows])


@pytest.mark.parametrize("bad", [V, V + 100, -1, -V - 1])
def test_out_of_range_and_negative_indices_raise_index_error_everywhere(bad):
    indices = _indices((4, 3))
    indices[2, 1] = bad
    for op, native, reference in _calls(indices):
        msgs = []
        for fn in (native, reference):
            with pytest.raises(IndexError, match=rf"{op}: indices must lie in \[0, {V}\)") as e:
                fn()
            msgs.append(str(e.value).splitlines()[0])
        assert msgs[0] == msgs[1] and f"found {bad}" in msgs[0]


def _both(fn_native, fn_ref):
    msgs = []
    for fn in (fn_native, fn_ref):
        with pytest.raises(ValueError) as e:
            fn()
        msgs.append(str(e.value).splitlines()[0])
    assert msgs[0] == msgs[1], msgs
    return msgs[0]


def test_bad_arguments_same_message_native_and_reference():
    w, s = _int8_table()
    idx = _indices((3,))
    qw, sc, z = _int4_table()
    packed = co.ops.int8_pack_weight(w)
    cases = [
        ((idx.float(), w, s), {}, "int8_embedding", "indices must be int32 or int64, got torch.float32"),
        ((idx, w.to(torch.int16), s), {}, "int8_embedding", r"weight must be int8 \[V, D\]"),
        ((idx, w, s[:-1]), {}, "int8_embedding", rf"weight_scale must be float32 of shape \[V\] = \[{V}\]"),
        ((idx, w, s), {"out_dtype": torch.int8}, "int8_embedding", "out_dtype must be float32, bfloat16 or float16"),
    ]
    for args, kwargs, op, pattern in cases:
        msg = _both(lambda a=args, k=kwargs: co.ops.int8_embedding(*a, **k),
                    lambda a=args, k=kwargs: ref.int8_embedding(*a, **k))
        assert op in msg and __import__("re").search(pattern, msg), msg
    msg = _both(lambda: co.ops.int8_embedding_packed(idx, packed, s, D + 1),
                lambda: ref.int8_embedding_packed(idx, packed, s, D + 1))
    assert f"embedding_dim={D + 1} but w_packed's header has D={D}" in msg
    msg = _both(lambda: co.ops.int8_embedding_packed(idx, packed[1:], s, D),
                lambda: ref.int8_embedding_packed(idx, packed[1:], s, D))
    assert "w_packed" in msg
    int4_cases = [
        ((idx, qw, torch.cat([sc, sc[:, :1]], 1), z, D), "group size of 32, 64, 128 or 256"),
        ((idx, qw, sc, z, 70), "embedding_dim=70 does not fit D_pad=64"),
        ((idx, qw, sc, z[:, :1], D), r"zeros must be uint8 \[V, G\]"),
        ((idx, qw.to(torch.int8), sc, z, D), r"qweight must be uint8 \[V, D_pad/2\]"),
    ]
    for args, text in int4_cases:
        msg = _both(lambda a=args: co.ops.int4_embedding(*a), lambda a=args: ref.int4_embedding(*a))
        assert __import__("re").search(text, msg), msg


def test_frozen_scales_refuse_grad():
    w, s = _int8_table()
    with pytest.raises(ValueError, match="weight_scale requires grad, but the compressed table is frozen"):
        co.ops.int8_embedding(_indices((2,)), w, s.requires_grad_())
    qw, sc, z = _int4_table()
    with pytest.raises(ValueError, match="scales requires grad"):
        co.ops.int4_embedding(_indices((2,)), qw, sc.requires_grad_(), z, D)
    with torch.no_grad():  # no gradient asked: fine
        assert co.ops.int8_embedding(_indices((2,)), w, s).shape == (2, D)


def _opcheck_samples():
    w, s = _int8_table()
    qw, sc, z = _int4_table()
    idx = _indices((2, 3), torch.int32)
    op = torch.ops.compressops
    return [(op.int8_embedding.default, (idx, w, s), {}),
            (op.int8_embedding.default, (idx.long(), w, s), {"out_dtype": torch.bfloat16}),
            (op.int8_embedding_packed.default, (idx, co.ops.int8_pack_weight(w), s, D), {}),
            (op.int4_embedding.default, (idx, qw, sc, z, D), {}),
            (op.int4_embedding.default, (idx, qw, sc, None, D), {"out_dtype": torch.float16})]


@pytest.mark.parametrize("idx", range(5))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.skipif(not NATIVE, reason="native library not loaded")
def test_native_kernels_registered():
    for op in ("int8_embedding", "int8_embedding_packed", "int4_embedding"):
        assert "CPU" in co.ops.native_kernels(op)
