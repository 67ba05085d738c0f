"""Coverage-guided fuzz targets (atheris) for what compressops reads from outside: saved files and packs.

Targets:
    load   the bytes of a small file written by co.save (one per family example, plus one with tied
           weights), after a selector byte that picks the float skeleton's kind; co.load into that
           skeleton, then one forward.
    packs  a selector byte that picks one family's pack (from its pack op), then the pack's bytes
           (header and payload); every compute op that takes such a pack runs on it, native and
           reference.
Allowed outcomes: success, or a clean exception of the kinds the library documents (ValueError, TypeError,
RuntimeError, torch's errors, safetensors' and json's errors). Anything else (KeyError, IndexError,
AttributeError, a crash, a sanitizer report) is a finding, and so is an accepted pack whose native
result differs from the reference's beyond what the op promises (the bounds of tests/test_properties.py).

Coverage: atheris instruments compressops' Python (the checks, readers and references). The native
code runs without coverage feedback: atheris's libFuzzer comes from clang, and the native library is
built with gcc, which cannot emit libFuzzer's instrumentation. `make fuzz` then replays every corpus
input against the ASan+UBSan build (FUZZ_SANITIZE=1, the default), so native memory errors abort
there (fuzzing itself under gcc's ASan runtime starves atheris's coverage feedback).

Run: `make fuzz` (each target FUZZ_SECONDS / 2 seconds; corpus, seeds and crash files under build/fuzz/),
or by hand: python fuzz/fuzz_targets.py <load|packs> build/fuzz/corpus-<target> -max_total_time=60.
tests/test_fuzz_targets.py runs each target's one-input function on its seeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:
    import atheris
except ImportError:  # the normal test suite runs the one-input functions without atheris
    atheris = None

# Instrumented only when fuzzing: imported by the test suite, the hook would also rewrite the compressops
# modules imported later in that process (bytecode torch.compile then fails to trace).
_fuzzing = atheris is not None and __name__ == "__main__"
_imports = atheris.instrument_imports(include=["compressops"]) if _fuzzing else contextlib.nullcontext()
with _imports:
    import compressops as co
    from compressops import ops, reference
    from compressops.formats import csr as fcsr
    from compressops.formats import half as fh
    from compressops.formats import int4 as f4
    from compressops.formats import int8 as f8
    from compressops.formats import pq as fpq
    from compressops.formats import sparse24 as s24

from safetensors import SafetensorError

from tests import families
from tests.test_ops_int4 import close_to_reference
from tests.test_ops_pq import bound as pq_bound
from tests.test_properties import assert_bits, finite_part, float_sum_bound

CLEAN = (ValueError, TypeError, RuntimeError, SafetensorError, json.JSONDecodeError)
KINDS = ("linear", "conv", "tied")


def _skeleton(kind: str) -> torch.nn.Module:
    """A float model of `kind`; "tied" ties an embedding to an output layer, as language models do."""
    if kind == "tied":
        m = torch.nn.Sequential(torch.nn.Embedding(10, 16), torch.nn.Linear(16, 10, bias=False),
                                torch.nn.Linear(10, 10))
        m[1].weight = m[0].weight
        return m
    return families.tiny_model(kind)


def _fixed_input(kind: str) -> torch.Tensor:
    if kind == "tied":
        return torch.tensor([[1, 2, 3]])
    g = torch.Generator().manual_seed(0)
    return torch.randn(families.tiny_input(kind, 2).shape, generator=g)


# ----------------------------------------------------------------------------------------- load

def load_seeds(examples=None) -> list[bytes]:
    """One file per family example (default: every example; a selector byte naming its kind, then the
    file), plus one with tied weights."""
    seeds = []
    with tempfile.TemporaryDirectory() as d:
        models = {name: families.convert_example(name) for name in (examples or families.EXAMPLES)}
        models["tied"] = co.convert(_skeleton("tied"), {"2": co.Int8()}).eval()
        for name, model in models.items():
            kind = "tied" if name == "tied" else families.EXAMPLES[name][1]
            path = os.path.join(d, "m.safetensors")
            co.save(model, path)
            with open(path, "rb") as f:
                seeds.append(bytes([KINDS.index(kind)]) + f.read())
    return seeds


def load_one_input(data: bytes) -> bool:
    """co.load the file in data[1:] into a float skeleton of kind data[0], then run it once.
    Returns whether both succeeded (False: a clean error)."""
    if len(data) < 2:
        return False
    kind = KINDS[data[0] % len(KINDS)]
    model = _skeleton(kind).eval()
    with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=_TMP) as f:
        f.write(data[1:])
        f.flush()
        try:
            co.load(model, f.name)
        except CLEAN:
            return False
    try:
        with torch.no_grad():
            model(_fixed_input(kind))
    except CLEAN:
        return False
    return True


_TMP = "/dev/shm" if os.path.isdir("/dev/shm") else None


# ---------------------------------------------------------------------------------------- packs

def _x(k: int, m: int = 3) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(k))


def _packs() -> list[tuple[str, torch.Tensor, dict]]:
    """(family, a valid pack, the other arguments its compute ops take)."""
    torch.manual_seed(0)
    k, n = 70, 9
    out = []
    w_q, w_s = f8.quantize_weight(torch.randn(n, k))
    out.append(("int8", ops.int8_pack_weight(w_q), {"w_scale": w_s}))
    for sym in (False, True):
        qw, s, z = f4.quantize_weight(torch.randn(n, k), 32, sym)
        out.append(("int4", ops.int4_pack_weight(qw, s, z, k, 32), {}))
    for vd in (torch.float32, torch.bfloat16):
        values, meta = s24.compress(torch.randn(n, k).to(vd))
        out.append(("sparse24", ops.sparse24_pack(values, meta, k), {}))
    values, meta = s24.compress(torch.randn(n, k))
    qv, qs = s24.quantize_values(values)
    out.append(("sparse24_int8", ops.sparse24_pack(qv, meta, k), {"w_scale": qs}))
    crow, col, vals = fcsr.compress(torch.randn(n, k) * (torch.rand(n, k) < 0.3))
    out.append(("csr", ops.csr_pack(crow, col, k), {"values": vals}))
    for kc in (16, 256):
        s_ = fpq.num_subspaces(k, 4)
        codes = torch.randint(0, 256, fpq.codes_shape(n, s_, kc), dtype=torch.uint8)
        out.append(("pq", ops.pq_pack(codes, torch.randn(s_, kc, 4), k), {}))
    out.append(("half", ops.half_pack_weight(torch.randn(n, k).half()), {}))
    bits = torch.randint(-2**63, 2**63 - 1, (n, 3, 3, 2))
    bits[..., -1] &= (1 << 6) - 1
    out.append(("binary_conv", ops.binary_pack_weight(bits, k), {"alpha": torch.rand(n)}))
    out.append(("binary_linear", ops.binary_pack_weight(bits[:, 0, 0].contiguous(), k), {"alpha": torch.rand(n)}))
    return out


PACKS = _packs()


def pack_seeds() -> list[bytes]:
    return [bytes([i]) + bytes(p.contiguous().view(-1).tolist()) for i, (_, p, _) in enumerate(PACKS)]


def _as_pack(raw: bytes, like: torch.Tensor) -> torch.Tensor:
    """The bytes in the valid pack's leading dims when they divide evenly, else one row (which the
    readers must refuse cleanly)."""
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    rows = like.shape[:-1]
    per = int(torch.tensor(rows).prod()) if rows else 1
    if flat.numel() and flat.numel() % per == 0:
        return flat.view(*rows, -1)
    return flat.view(1, -1)


def _bias(n: int):
    return torch.randn(n, generator=torch.Generator().manual_seed(n))


def _compare_float(y, ref, close):
    """The native result against the reference's: the same non-finite pattern, then close()."""
    fin = finite_part(y, ref)
    close(y, ref, fin)


def _run(fam: str, packed: torch.Tensor, extra: dict) -> bool:
    """Every compute op of `fam` on `packed`, native and reference; both raise cleanly or agree.
    Returns whether every op accepted the pack."""
    n = packed.shape[0]
    b = _bias(n)
    calls = []  # (op name, args, kwargs, comparison)
    if fam in ("binary_conv", "binary_linear"):
        c = _header_k(packed)
        c = c if c is not None and 1 <= c <= 512 else 70  # an unreadable header: any x, the reader refuses
        if fam == "binary_conv":
            xp = ops.binary_pack_activation(torch.randn(2, c, 5, 4, generator=torch.Generator().manual_seed(1)))
            for op in ("binary_conv2d", "binary_conv2d_packed"):
                calls.append((op, (xp, packed, extra["alpha"], b, (1, 1), (1, 1)), {}, "bits"))
        else:
            calls.append(("binary_linear", (ops.binary_pack_activation(_x(c)), packed, extra["alpha"], b), {}, "bits"))
    else:
        k = _header_k(packed)
        x = _x(k if k is not None and 1 <= k <= 4096 else 70)
        if fam == "int8":
            calls.append(("int8_linear", (x, packed, extra["w_scale"], b), {}, "int8_bits"))
            calls.append(("int8_weight_only_linear", (x, packed, extra["w_scale"], b), {}, "int8_wo"))
        elif fam == "int4":
            calls.append(("int4_linear", (x, packed, b), {}, "int4"))
        elif fam == "sparse24":
            calls.append(("sparse24_linear", (x, packed, b), {}, "sparse24"))
        elif fam == "sparse24_int8":
            calls.append(("sparse24_int8_linear", (x, packed, extra["w_scale"], b), {}, "s24_bits"))
        elif fam == "csr":
            calls.append(("csr_linear", (x, packed, extra["values"], b), {}, "csr"))
        elif fam == "pq":
            calls.append(("pq_linear", (x, packed, b), {}, "pq"))
        elif fam == "half":
            calls.append(("half_linear", (x, packed, b), {}, "half"))
    accepted = True
    for op, args, kwargs, how in calls:
        try:  # native first: under the sanitizers it runs even where the reference raises a finding
            y = getattr(ops, op)(*args, **kwargs)
        except CLEAN:
            y = None
        try:
            ref = getattr(reference, op)(*args, **kwargs)
        except CLEAN:
            ref = None
        if (y is None) != (ref is None):
            raise AssertionError(f"{op}: native {'raised' if y is None else 'returned'} but the reference "
                                 f"{'raised' if ref is None else 'returned'}")
        if y is not None:
            _agree(how, y, ref, args)
        accepted = accepted and y is not None
    return accepted


def _header_k(packed: torch.Tensor):
    """K from a pack's header bytes (offset 32), or None when there is no header."""
    flat = packed.contiguous().view(-1)
    if flat.numel() < 64:
        return None
    return int(flat[32:40].view(torch.int64))


def _genuine_int8(packed: torch.Tensor) -> bool:
    """Whether an int8 pack's payload is what int8_pack_weight builds from its weights (no -128, column
    sums that match): only then do the levels promise the reference's bits (formats/int8.py)."""
    w = f8.unpack_weight(packed, "fuzz")
    used = f8.packed_bytes(*w.shape)
    return not (w == -128).any() and torch.equal(ops.int8_pack_weight(w).view(-1)[:used], packed.view(-1)[:used])


def _genuine_sparse24_int8(packed: torch.Tensor) -> bool:
    """Whether an int8 2:4 pack's values are ones sparse24_pack accepts (no -128; formats/sparse24.py)."""
    n, k, dtype = s24.read_header(packed, "fuzz")
    return not s24.has_int8_min(s24.views(packed, n, k, dtype)[0])


def _may_overflow(x: torch.Tensor, w_abs: torch.Tensor, bias) -> torch.Tensor:
    """[M, N] mask of the outputs whose float32 sums may overflow: sum |x| |w| + |bias| beyond the largest
    float32. There an accumulation order may reach Inf (or Inf - Inf = NaN) where another stays finite,
    so the non-finite pattern is not promised there."""
    mag = x.reshape(-1, x.shape[-1]).double().abs() @ w_abs.double().t()
    if bias is not None:
        mag = mag + bias.double().abs()
    return ~(mag <= torch.finfo(torch.float32).max)  # NaN magnitudes (NaN weights) count as overflow


def _agree_float(y, ref, bound, may_overflow) -> None:
    """Within bound where finite; the same non-finite pattern except where the sums may overflow."""
    keep = ~may_overflow.reshape(y.shape)
    fin = finite_part(y[keep], ref[keep])
    err = (y[keep].double() - ref[keep].double()).abs()
    assert ((err <= bound.double().reshape(y.shape)[keep]) | (y[keep] == ref[keep]))[fin].all()


def _agree(how: str, y, ref, args) -> None:
    x, packed = args[0], args[1]
    if (how == "int8_bits" and not _genuine_int8(packed)) or (how == "s24_bits" and not _genuine_sparse24_int8(packed)):
        return  # an edited payload: no out-of-bounds access and clean errors are all that is promised
    if how in ("bits", "int8_bits", "s24_bits"):
        assert_bits(y, ref)
        return
    if how == "int4":
        # W4A8 rounds x to within a group's amax: 2|x| bounds the magnitude the sums see
        keep = ~_may_overflow(2 * x, f4.dense_weight("fuzz", packed).abs(), args[2]).reshape(y.shape)
        fin = finite_part(y[keep], ref[keep])
        assert not fin.any() or close_to_reference(y[keep][fin], ref[keep][fin])
        return
    if how == "pq":
        canon, codebooks, k_in = fpq.unpack(packed)
        k = codebooks.shape[1]
        bound = pq_bound(x, codebooks, canon, k_in, k).double() + 2**-23 * args[2].double().abs()
        over = _may_overflow(x, fpq.dense_weight("fuzz", packed).abs(), args[2])
        _agree_float(y, ref, bound, over | ~torch.isfinite(bound))
        return
    if how == "half":
        w_abs = fh.unpack_weight(packed).float().abs()
    elif how == "int8_wo":
        w_abs = f8.unpack_weight(packed).float().abs() * args[2].abs()[:, None]
    elif how == "sparse24":
        n, k, _, dtype = s24.check_linear("fuzz", x, packed)
        values, meta = s24.views(packed, n, k, dtype)
        w_abs = s24.decompress(values.float().abs(), meta, k)
    else:  # csr
        h = fcsr.read_header(packed, "fuzz")
        rowptr, cols = fcsr.index_views(packed, h)
        w_abs = fcsr.to_dense(rowptr, cols, args[2].float().abs(), h.k)
    bias = args[-1]
    _agree_float(y, ref, float_sum_bound(x, w_abs, bias), _may_overflow(x, w_abs, bias))


def packs_one_input(data: bytes) -> bool:
    """data[0] picks a family's valid pack; data[1:] replaces its bytes; its compute ops run on them.
    Returns whether they all accepted it (False: clean errors)."""
    if not data:
        return False
    fam, like, extra = PACKS[data[0] % len(PACKS)]
    with co.sparse_route("kernel"):
        return _run(fam, _as_pack(data[1:], like), extra)


TARGETS = {"load": (load_one_input, load_seeds), "packs": (packs_one_input, pack_seeds)}


def recording(one_input, findings: str):
    """one_input that records each distinct finding (exception type and raising line) under
    `findings` (the input and its traceback) and goes on fuzzing, so one finding cannot use up a
    fixed time budget; `make fuzz` fails when the directory is not empty."""
    seen = set()

    def run(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as e:  # noqa: BLE001  (every escape is a finding: recorded, not swallowed)
            where = traceback.extract_tb(e.__traceback__)[-1]
            key = f"{type(e).__name__}-{os.path.basename(where.filename)}-{where.lineno}"
            if key in seen:
                return
            seen.add(key)
            os.makedirs(findings, exist_ok=True)
            with open(os.path.join(findings, key + ".input"), "wb") as f:
                f.write(data)
            with open(os.path.join(findings, key + ".txt"), "w") as f:
                f.write("".join(traceback.format_exception(e)))
            print(f"FINDING {key}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)

    return run


def main(argv: list[str]) -> None:
    """python fuzz/fuzz_targets.py <target> <corpus dir> [--findings DIR] [libFuzzer flags]: seeds the
    corpus when empty. With --findings DIR, findings are recorded there and fuzzing goes on; without,
    the first one stops it (libFuzzer writes the crash file)."""
    target, corpus, rest = argv[1], argv[2], argv[3:]
    one_input, seeds = TARGETS[target]
    if rest[:1] == ["--findings"]:
        one_input, rest = recording(one_input, rest[1]), rest[2:]
    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        for i, s in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed-{i:02d}"), "wb") as f:
                f.write(s)
    atheris.Setup([argv[0], corpus, *rest], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
