"""The op registry: schemas, kernels per dispatch key, info()."""

import os
import subprocess
import sys

import pytest
import torch

import compressops as co
from compressops._schemas import SCHEMAS
from compressops.ops import native_kernels

from .helpers import requires_native


@requires_native
@pytest.mark.parametrize("op", sorted(SCHEMAS))
def test_python_schema_mirror_matches_native(op):
    native = str(getattr(torch.ops.compressops, op).default._schema)
    assert native == f"compressops::{op}{SCHEMAS[op]}"


@requires_native
@pytest.mark.parametrize("op", sorted(SCHEMAS))
def test_every_op_has_cpu_meta_and_default_kernels(op):
    dump = torch._C._dispatch_dump(f"compressops::{op}")
    assert "CPU" in native_kernels(op)
    assert "\nMeta:" in dump and "CompositeExplicitAutograd" in dump


def test_info_cli_reports_each_op():
    out = subprocess.run([sys.executable, "-m", "compressops.info"], capture_output=True, text=True, check=True).stdout
    for op in SCHEMAS:
        assert op in out
    if co._loader.native_loaded():
        assert "native library: loaded" in out and f"active {co.isa()}" in out


def test_info_function_can_be_called_twice():
    # A fresh process: the first call imports compressops.info, which must not shadow co.info.
    code = "import compressops as co; a = co.info(); b = co.info(); assert a.keys() == b.keys(); print(callable(co.info))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_no_extension_subprocess_runs_reference():
    code = r"""
import torch, compressops as co
from compressops import ops
assert not co._loader.native_loaded()
assert "COMPRESSOPS_DISABLE_EXTENSION" in co._loader.load_error()
assert co.isa() == "reference"
lin = torch.nn.Linear(20, 6)
m = co.convert(torch.nn.Sequential(lin), co.Int8())
y = m(torch.randn(3, 20))
assert y.shape == (3, 6)
x = torch.randn(2, 20)
torch.library.opcheck(torch.ops.compressops.int8_linear.default, (x, m[0].weight_packed, m[0].weight_scale, m[0].bias))
print("ok", co.info()["load_error"])
"""
    env = {**__import__("os").environ, "COMPRESSOPS_DISABLE_EXTENSION": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok disabled")


def _without_native(code: str, **env):
    env = {**os.environ, "COMPRESSOPS_DISABLE_EXTENSION": "1", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_the_reference_fallback_warns_once_on_first_use():
    """Without the native library, the first op that runs its reference says so (once), and names the
    opt-in error; importing alone does not warn."""
    res = _without_native(r"""
import warnings, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as at_import:
    import compressops as co
assert not [w for w in at_import if issubclass(w.category, co._loader.NativeFallbackWarning)]
with warnings.catch_warnings(record=True) as seen:  # convert's pack op is the first to run
    m = co.convert(torch.nn.Sequential(torch.nn.Linear(20, 6)), co.Int8())
    m(torch.randn(3, 20)); m(torch.randn(3, 20))
fallback = [w for w in seen if issubclass(w.category, co._loader.NativeFallbackWarning)]
assert len(fallback) == 1, [str(w.message) for w in seen]
msg = str(fallback[0].message)
assert "int8_pack_weight runs its pure-PyTorch reference kernel" in msg and "COMPRESSOPS_REQUIRE_NATIVE=1" in msg and "DISABLE_EXTENSION" in msg, msg
print("ok")
""")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_require_native_makes_the_fallback_an_import_error():
    res = _without_native("import compressops", COMPRESSOPS_REQUIRE_NATIVE="1")
    assert res.returncode != 0
    assert "ImportError: compressops: COMPRESSOPS_REQUIRE_NATIVE=1 but the native library is not loaded" in res.stderr


def test_info_says_loudly_when_the_native_library_is_missing():
    res = _without_native("import compressops.info as i; i.main()")
    assert res.returncode == 0, res.stderr
    assert "NOT loaded" in res.stdout and "WARNING: every op runs its pure-PyTorch reference" in res.stdout


def test_the_sdist_holds_what_a_native_build_needs(tmp_path):
    """An sdist without csrc/, CMakeLists.txt and cmake/ cannot build the native library (issue 19)."""
    import tarfile

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=False).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((root / f).read_bytes())
    res = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "CMakeLists.txt", "cmake/isa.cmake", "csrc/ops.cpp", "csrc/common/pack_header.h", "setup.py",
                   "compressops/__init__.py"):
        assert needed in names, needed
    assert all(f in names for f in files if f.startswith("csrc/")), sorted(f for f in files if f.startswith("csrc/")
                                                                        and f not in names)[:5]
