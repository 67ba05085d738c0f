"""The native library from a C++ process without Python (what an inference server embeds)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp

import compressops

from .helpers import requires_native

LIB = Path(compressops.__file__).parent / "libcompressops_ops.so"


@requires_native
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_process_loads_library_and_runs_int8_linear(tmp_path):
    import torch

    exe = tmp_path / "load_ops"
    src = Path(__file__).parent / "cpp" / "load_ops.cpp"
    libdir = Path(torch.__file__).parent / "lib"
    cmd = ["g++", "-std=c++20", "-O1", str(src), "-o", str(exe),
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *[f"-isystem{p}" for p in cpp.include_paths()],
           f"-L{libdir}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{libdir}", "-ldl"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe), str(LIB)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok 5 x 37")
