"""The native library from a C++ process without Python (what an inference server embeds)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp

import compressops

from .families import EXAMPLES, convert_example, tiny_input
from .helpers import requires_native

LIB = Path(compressops.__file__).parent / "libcompressops_ops.so"


@requires_native
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_process_loads_library_and_runs_int8_linear(tmp_path):
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


class _IO(torch.nn.Module):
    """Holds an input and the expected output for the C++ program (TorchScript has no plain tensor file)."""

    def __init__(self, x, y):
        super().__init__()
        self.register_buffer("x", x)
        self.register_buffer("y", y)

    def forward(self):
        return self.y


@requires_native
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_process_runs_scripted_models_of_every_format(tmp_path):
    import warnings

    exe = tmp_path / "run_torchscript"
    src = Path(__file__).parent / "cpp" / "run_torchscript.cpp"
    libdir = Path(torch.__file__).parent / "lib"
    cmd = ["g++", "-std=c++20", "-O1", str(src), "-o", str(exe),
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *[f"-isystem{p}" for p in cpp.include_paths()],
           f"-L{libdir}", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{libdir}", "-ldl"]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]

    args = []
    for name in sorted(EXAMPLES):
        model, x = convert_example(name), tiny_input(EXAMPLES[name][1])
        with torch.inference_mode():
            y = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still what C++ loads
            torch.jit.save(torch.jit.script(model), tmp_path / f"{name}.pt")
            torch.jit.save(torch.jit.script(_IO(x, y.clone())), tmp_path / f"{name}_io.pt")
        args += [str(tmp_path / f"{name}.pt"), str(tmp_path / f"{name}_io.pt")]
    run = subprocess.run([str(exe), str(LIB), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("ok ") == len(EXAMPLES), run.stdout
