"""The recommended deployment path (docs/deployment.md): a converted model -> torch.export ->
AOTInductor package (.pt2) -> a fresh Python process that imports compressops (which registers the
ops the package calls) loads the package and gets the eager output, bit for bit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

import compressops as co

from .helpers import randn_nonzero

# The package's compiled code calls torch.ops.compressops.* through the dispatcher, exactly the
# kernels eager runs, and what inductor compiles between them (ReLU, Hardtanh, a reshape) is exact,
# so equal inputs give equal outputs: the comparison is torch.equal, not a tolerance.
_RUN_PACKAGE = textwrap.dedent("""
    import sys
    import torch
    import compressops  # registers torch.ops.compressops.*, which the package calls
    package, out = sys.argv[1], sys.argv[2]
    run = torch._inductor.aoti_load_package(package)
    inputs = torch.load(sys.argv[3])
    torch.save([run(x) for x in inputs], out)
""")


# family -> the compute op of its layer in _model()
_OPS = {"binary": "binary_conv2d", "int8": "int8_linear", "int4": "int4_linear", "sparse24": "sparse24_linear",
        "csr": "csr_linear", "pq": "pq_linear", "half": "half_linear"}


def _model() -> nn.Module:
    """[B, 16, 5, 4] -> [B, 24]: one layer of every family (so one compile covers them all) and a
    dense one, with odd sizes (int4's K=80 is not a multiple of its group size)."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Hardtanh(), nn.Flatten(),
                          nn.Linear(320, 96), nn.ReLU(), nn.Linear(96, 80), nn.ReLU(), nn.Linear(80, 72), nn.ReLU(),
                          nn.Linear(72, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(),
                          nn.Linear(40, 24))
    config = {"0": co.Binary(keep_first_last=False), "3": co.Int8(), "5": co.Int4(group_size=32),
              "7": co.Sparse24(), "9": co.CSR(sparsity=0.8), "11": co.PQ(num_centroids=16, subvector_dim=2, max_iter=3),
              "13": co.Half(), "*": None}
    return co.convert(model, config).eval()


def test_aoti_package_runs_in_a_fresh_process(tmp_path):
    assert set(_OPS) == {f.name for f in co.configs.families()}, "add the new family's layer to _model()"
    model = _model()
    x = randn_nonzero(3, 16, 5, 4)
    with torch.no_grad():
        batch = torch.export.Dim("batch", min=1, max=64)
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        ops = {n.target.name() for n in ep.graph.nodes if isinstance(n.target, torch._ops.OpOverload)}
        assert {f"compressops::{op}" for op in _OPS.values()} <= ops, ops
        package = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
        inputs = [x, randn_nonzero(7, 16, 5, 4), randn_nonzero(1, 16, 5, 4)]  # the traced batch size and two others
        eager = [model(t) for t in inputs]
    torch.save(inputs, tmp_path / "inputs.pt")
    root = str(Path(co.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _RUN_PACKAGE, package, str(tmp_path / "out.pt"),
                          str(tmp_path / "inputs.pt")], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = torch.load(tmp_path / "out.pt")
    assert len(outputs) == len(eager)
    for got, want in zip(outputs, eager):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, want)
