"""Release metadata and what the built artifacts say (issue 19: install like a PyTorch extension).

The slow checks (the suite against another torch, the sdist built into a wheel in a fresh venv) are
`make test-torch TORCH=2.13.0` and `make check-sdist`; these are the quick ones."""

import ast
import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import compressops as co

from .helpers import requires_native
from .install_check import bad_runpaths, runpaths

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _torch_requirement(reqs) -> Requirement:
    (torch_req,) = [Requirement(r) for r in reqs if Requirement(r).name == "torch"]
    return torch_req


def test_version_is_written_once():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "compressops.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", co.__version__), co.__version__
    # The changelog's newest entry is the version being built.
    heading = next(line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## "))
    assert heading.split()[1] == co.__version__, heading


def test_torch_is_a_range_not_a_pin():
    req = _torch_requirement(PROJECT["dependencies"])
    assert {s.operator for s in req.specifier} == {">=", "<"}, req
    assert req.specifier.contains(Version(torch.__version__).base_version), f"torch {torch.__version__} not in {req}"
    # An isolated build would fetch a torch this range picks, not the user's: a range, never a pin.
    build_req = _torch_requirement(PYPROJECT["build-system"]["requires"])
    assert build_req.specifier == req.specifier, build_req
    readme = (ROOT / "README.md").read_text()
    assert "--no-build-isolation" in readme
    (raw,) = [r for r in PROJECT["dependencies"] if Requirement(r).name == "torch"]
    assert raw in readme, f"README does not state the supported range {raw}"


def test_numpy_is_needed_by_the_benchmarks_only():
    assert not any(re.match(r"numpy\b", r) for r in PROJECT["dependencies"])
    assert any(re.match(r"numpy\b", r) for r in PROJECT["optional-dependencies"]["bench"])
    assert any(re.match(r"numpy\b", r) for r in PROJECT["optional-dependencies"]["test"])  # tests import it
    pkg = Path(co.__file__).parent  # the checkout's, or the installed copy under `make test-torch`
    importers = []
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "numpy" or n.startswith("numpy.") for n in names):
                importers.append(path.relative_to(pkg).as_posix())
    assert importers and all(p.startswith("bench/") for p in importers), importers


def test_the_wheel_metadata(tmp_path):
    """A pure-Python wheel (COMPRESSOPS_BUILD_EXT=0: seconds, not a native build) from the tracked files
    carries the metadata and the package data every wheel has."""
    # Tracked and new (untracked, not ignored) files: what the next commit will hold.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    env = {**__import__("os").environ, "COMPRESSOPS_BUILD_EXT": "0"}
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, env=env,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = (tmp_path / "dist").glob("compressops-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        dist_info = f"compressops-{co.__version__}.dist-info"
        meta = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
    assert "compressops/py.typed" in names and "compressops/_schemas.json" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert meta["Version"] == co.__version__
    assert meta["License-Expression"] == "MIT"
    reqs = meta.get_all("Requires-Dist")
    core = [r for r in reqs if "extra ==" not in r]
    assert _torch_requirement(core).specifier == _torch_requirement(PROJECT["dependencies"]).specifier
    assert not any(r.startswith("numpy") for r in core), core
    assert any(r.startswith("numpy") and 'extra == "bench"' in r for r in reqs), reqs
    assert "Typing :: Typed" in meta.get_all("Classifier")


@requires_native
@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_built_libraries_search_no_build_directory():
    """An in-place build's libraries may search their own directory, torch's lib directory beside them
    (a wheel's layout), the building venv's torch/lib and, for a CUDA build, the CUDA toolkit's runtime
    directory, never the build tree or a temporary directory.
    (What a wheel ships, exactly $ORIGIN and $ORIGIN/../torch/lib, is checked by tests/install_check.py
    under `make check-sdist` and `make test-torch`.)"""
    pkg = Path(co.__file__).parent
    libs = sorted(pkg.glob("*.so"))
    assert {p.name for p in libs} >= {"_C.abi3.so", "libcompressops_ops.so"}, libs
    torch_lib = str(Path(torch.__file__).parent / "lib")
    allowed = ["$ORIGIN", "$ORIGIN/../torch/lib", torch_lib]
    for lib in libs:
        rp = runpaths(lib)
        assert rp, f"{lib.name} has no RUNPATH; _C needs $ORIGIN to find libcompressops_ops.so"
        if (co._loader.build_info() or {}).get("cuda_compiled") == "ON":
            allowed += [p for p in rp if p.startswith("/") and any(Path(p).glob("libcudart.so*"))]
        assert not bad_runpaths(lib, allowed), f"{lib.name}: RUNPATH {rp}, allowed {allowed}"
