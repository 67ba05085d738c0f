"""Files written by earlier releases keep loading and computing the same thing.

tests/fixtures/saved_v0/ holds, for every family and variant compressops 0.1.0 wrote, a converted
tiny model saved with compressops.save and as a plain torch.save(state_dict), with a fixed input
and the output it gave (tests/fixtures/make_fixtures.py wrote them; README.txt there says when).
For every fixture:
  (a) compressops.load(float skeleton, file) computes the stored output on the stored input, at
      every CPU level: bit-exact on the integer paths, within a stated bound on the float paths;
  (b) the plain state dict loads with load_state_dict into a model converted from a skeleton and
      computes the same;
  (c) the loaded model's state_dict equals the stored one key by key (dtype, shape, values), except
      for deliberate format changes, each listed below with what it expects instead.
The skeletons are drawn from another seed than the fixtures, so every value that reaches the
output has to come from the file. Only public API is used, so the storage code may change freely
underneath as long as old files keep their meaning.
"""

import pathlib
import struct

import pytest
import torch
from safetensors.torch import load_file

import compressops as co

from .fixtures import make_fixtures as mf
from .helpers import isa_params, requires_native

SAVED_V0 = pathlib.Path(__file__).resolve().parent / "fixtures" / "saved_v0"
SKELETON_SEED = 1  # the fixtures were written from seed 0

# Bit-identical on every CPU level by contract: integer accumulation, activations quantized (or
# binarized) by one fixed rule, one fixed float epilogue, and no dense float layer in the model.
EXACT = {"int8_dynamic", "int8_static", "sparse24_int8", "binary_w1a1", "binary_chain"}

# Float paths: max|y - y_ref| <= bound * max|y_ref|. A layer sums at most 18 float32 products (the
# MLP) or 144 (the W1A32 conv), plus the bias, and CPU levels differ only in the order of that sum
# (and FMA contraction): a few ulps of the largest partial sum. Measured when the fixtures were
# written (AMD EPYC, avx512_vnni; scalar, avx2, avx512, avx512_vnni against the stored output): the
# largest difference was 2.2e-7 * max|y| (PQ k=16, scalar); 1e-6 is about 5x that and still far
# below any format change (one flipped int8/int4 code or PQ code moves an output by ~1e-3 relative or more).
FLOAT_BOUND = {
    # weight-only int8: float dot of int8-times-scale weights; measured 1.1e-7 (scalar).
    "int8_weight_only": 1e-6,
    # W4A8: the dot is integer inside a group and float across groups; K <= 32 is one group per
    # row here, so only the epilogue is float; measured 0.
    "int4_g32_asym": 1e-6,
    "int4_g32_sym": 1e-6,
    "int4_g32_gptq": 1e-6,
    # 2:4 float: 9 (or 6) kept products per row; bf16 values times float32 inputs are exact in
    # float32, so both dtypes differ only by summation order; measured 0.
    "sparse24_fp32": 1e-6,
    "sparse24_bf16": 1e-6,
    # CSR: the nonzeros of a row summed in a level-dependent order; measured 2.9e-8 (scalar).
    "csr_70": 1e-6,
    # PQ: lookup-table build (float dots of d values) and the sum over subspaces; measured 2.2e-7
    # (k=16) and 8.9e-8 (k=256), scalar against the vector levels. The k=16 CPU kernel sums uint8-
    # quantized tables (compressops.ops.pq_linear), which is why these outputs are the native kernels'
    # and the output checks need the native library: the reference's exact tables differ by ~5e-3.
    "pq_k16_d2": 1e-6,
    "pq_k256_d4": 1e-6,
    # W1A32: torch's conv2d/linear on the +-1 weights, then alpha and bias; the CPU level does not
    # change it (measured 0), another machine's BLAS may reorder the sum.
    "binary_w1a32": 1e-6,
}

NAMES = list(mf.FIXTURES)

# Deliberate key changes for check (c). csr_70 was saved with CSRLinear's state_dict version 2, which
# held `index`, the kernels' CSR index of compressops 0.1; version 3 holds the canonical crow and col
# instead (compressops/formats/csr.py). So for csr_70 (c) expects crow and col equal to the decode of
# each stored index, and every other key equal.
INDEX_TO_CANONICAL = {"csr_70"}


def _decode_csr_index(index):
    """crow int32 [N+1] and col uint16 [nnz] (version 3's dtypes for K <= 65536) of a version-2 index:
    int32 magic "CCSR", version 1, N, K, col_bytes at byte 0, int64 nnz at byte 32, int64 rowptr [N+1]
    from byte 64, then the columns."""
    raw = bytes(index.tolist())
    magic, version, n, k, col_bytes = struct.unpack_from("<5i", raw)
    (nnz,) = struct.unpack_from("<q", raw, 32)
    assert (magic, version, col_bytes) == (0x52534343, 1, 2) and k <= 65536
    crow = struct.unpack_from(f"<{n + 1}q", raw, 64)
    col = struct.unpack_from(f"<{nnz}H", raw, 64 + 8 * (n + 1))
    return torch.tensor(crow, dtype=torch.int32), torch.tensor(col, dtype=torch.int32).to(torch.uint16)


def _expected_state_dict(name, stored):
    if name not in INDEX_TO_CANONICAL:
        return stored
    expected = {}
    for key, t in stored.items():
        if key.endswith("index"):
            prefix = key[:-len("index")]
            expected[prefix + "crow"], expected[prefix + "col"] = _decode_csr_index(t)
        else:
            expected[key] = t
    return expected


def test_every_fixture_has_a_stated_bound_and_its_files():
    assert set(NAMES) == EXACT | set(FLOAT_BOUND) and not EXACT & set(FLOAT_BOUND)
    for name in NAMES:
        for suffix in (".safetensors", ".state_dict.pt"):
            assert (SAVED_V0 / f"{name}{suffix}").is_file(), f"missing fixture file {name}{suffix}"
    assert set(_IO) == {f"{name}.{t}" for name in NAMES for t in ("input", "output")}


_IO = load_file(str(SAVED_V0 / mf.IO_FILE))


def _io(name):
    return _IO[f"{name}.input"], _IO[f"{name}.output"]


def _load_saved(name):
    return co.load(mf.load_skeleton(name, SKELETON_SEED), str(SAVED_V0 / f"{name}.safetensors")).eval()


def _load_plain(name):
    model = mf.converted_model(name, SKELETON_SEED)
    model.load_state_dict(torch.load(SAVED_V0 / f"{name}.state_dict.pt", weights_only=True))
    return model.eval()


def _check_output(name, y, ref):
    assert y.dtype == ref.dtype and y.shape == ref.shape
    if name in EXACT:
        assert torch.equal(y, ref), f"{name}: max diff {(y - ref).abs().max().item():.3g}, expected bit-exact"
    else:
        err = (y - ref).abs().max().item() / ref.abs().max().item()
        assert err <= FLOAT_BOUND[name], f"{name}: max|y - y_ref| / max|y_ref| = {err:.3g} > {FLOAT_BOUND[name]}"


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("name", NAMES)
def test_saved_file_loads_and_gives_stored_output(name, level):
    x, ref = _io(name)
    model = _load_saved(name)
    with co.cpu_isa(level), torch.no_grad():
        y = model(x)
    _check_output(name, y, ref)


@requires_native
@pytest.mark.parametrize("name", NAMES)
def test_plain_state_dict_loads_into_converted_model(name):
    x, ref = _io(name)
    model = _load_plain(name)
    with torch.no_grad():
        y = model(x)
        y_saved = _load_saved(name)(x)
    _check_output(name, y, ref)
    assert torch.equal(y, y_saved), f"{name}: the state dict and the .safetensors file compute differently"


@pytest.mark.parametrize("name", NAMES)
def test_reloaded_state_dict_equals_stored(name):
    stored_by_path = {
        "safetensors": (_load_saved(name), load_file(str(SAVED_V0 / f"{name}.safetensors"))),
        "state_dict": (_load_plain(name), torch.load(SAVED_V0 / f"{name}.state_dict.pt", weights_only=True)),
    }
    for path, (model, stored) in stored_by_path.items():
        got, stored = model.state_dict(), _expected_state_dict(name, stored)
        assert sorted(got) == sorted(stored), f"{name} ({path}): keys differ"
        for key, ref in stored.items():
            t = got[key]
            assert t.dtype == ref.dtype and t.shape == ref.shape, \
                f"{name} ({path}) {key}: {t.dtype} {list(t.shape)} != stored {ref.dtype} {list(ref.shape)}"
            assert torch.equal(t, ref), f"{name} ({path}) {key}: values differ from the stored ones"
