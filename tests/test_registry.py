"""The op registry: schemas, kernels per dispatch key, info()."""

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
