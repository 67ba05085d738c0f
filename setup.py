"""Thin shim: builds the native library with CMake (per-file ISA flags need it).

Environment toggles:
  COMPRESSOPS_BUILD_EXT=0      pure-Python install; every op runs through compressops/reference.py
  COMPRESSOPS_CUDA=auto|0|1    auto: build CUDA kernels whenever nvcc is found (no GPU needed)
  COMPRESSOPS_EMULATION=auto|0|1  auto: also build the emulated avx512/avx512_vnni/amx levels (tests run
                               them on CPUs that lack those levels) whenever simde-py is installed
  COMPRESSOPS_CPU_ISAS="avx2;avx512;avx512_vnni;amx"   vector levels to compile (scalar always)
  COMPRESSOPS_WERROR=1         warnings are errors (CI)
  COMPRESSOPS_SANITIZE=1       ASan + UBSan build in its own build directory (make sanitize)
  MAX_JOBS=N                   parallel compile jobs
  DEBUG=1                      -O0 -g
The build never looks at this machine's CPU or GPU: every level the compiler can emit is built and
the right one is chosen at run time.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
OPS_LIB = "libcompressops_ops.so"


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[], py_limited_api=True)


def _cmake() -> str:
    local = Path(sys.executable).parent / "cmake"
    return str(local) if local.exists() else (shutil.which("cmake") or "cmake")


class cmake_build_ext(build_ext):
    def build_extension(self, ext):
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        # A stable build directory keeps rebuilds incremental across `pip install -e .` runs.
        sanitize = os.environ.get("COMPRESSOPS_SANITIZE") == "1"
        build_dir = ROOT / "build" / (f"cmake-py{sys.version_info.major}{sys.version_info.minor}"
                                      + ("-sanitize" if sanitize else ""))
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if os.environ.get("DEBUG") == "1" else "Release"
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCOMPRESSOPS_OUTPUT_DIR={out_dir}",
            f"-DCOMPRESSOPS_CUDA={os.environ.get('COMPRESSOPS_CUDA', 'auto')}",
            f"-DCOMPRESSOPS_EMULATION={os.environ.get('COMPRESSOPS_EMULATION', 'auto')}",
            f"-DCOMPRESSOPS_WERROR={'ON' if os.environ.get('COMPRESSOPS_WERROR') == '1' else 'OFF'}",
            f"-DCOMPRESSOPS_SANITIZE={'ON' if sanitize else 'OFF'}",
            f"-DCOMPRESSOPS_DEV_RPATH={'ON' if self._in_place() else 'OFF'}",
        ]
        if os.environ.get("COMPRESSOPS_CPU_ISAS"):
            args.append(f"-DCOMPRESSOPS_CPU_ISAS={os.environ['COMPRESSOPS_CPU_ISAS']}")
        if shutil.which("ninja") or (Path(sys.executable).parent / "ninja").exists():
            args += ["-G", "Ninja"]
            ninja = Path(sys.executable).parent / "ninja"
            if ninja.exists():
                args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        cmake = _cmake()
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs])

        info = json.loads((out_dir / "cmake_build_info.json").read_text())
        info.update({
            "python": sys.version.split()[0],
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "toggles": {k: os.environ[k] for k in ("COMPRESSOPS_CUDA", "COMPRESSOPS_CPU_ISAS", "COMPRESSOPS_SANITIZE",
                                                   "DEBUG")
                        if k in os.environ},
        })
        (out_dir / "_build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (out_dir / "cmake_build_info.json").unlink()
        # Editable installs import from the source tree; put both libraries there too.
        src_pkg = ROOT / "compressops"
        if self._in_place() and out_dir != src_pkg.resolve():
            for name in (OPS_LIB, Path(self.get_ext_fullpath(ext.name)).name, "_build_info.json"):
                shutil.copy2(out_dir / name, src_pkg / name)

    def run(self):
        # setuptools clears self.inplace while it builds (into build/lib, copying to the checkout after).
        self._requested_inplace = bool(self.inplace)
        super().run()

    def _in_place(self) -> bool:
        """An editable install or build_ext --inplace: the libraries run from the checkout, not a wheel."""
        return bool(getattr(self, "editable_mode", False) or self.inplace
                    or getattr(self, "_requested_inplace", False))

    def get_outputs(self):
        # The ops library is a second output of the one CMake extension; wheels must carry it.
        outs = super().get_outputs()
        extra = [str(Path(self.get_ext_fullpath(e.name)).parent / n) for e in self.extensions
                 for n in (OPS_LIB, "_build_info.json")]
        return outs + extra


def write_schema_mirror() -> None:
    """csrc/ops.cpp's m.def schemas -> compressops/_schemas.json, the mirror that defines the ops
    from Python when the native library is absent. Runs on every setup.py invocation, so
    pure-Python installs (COMPRESSOPS_BUILD_EXT=0) and wheels carry it too."""
    spec = importlib.util.spec_from_file_location("_compressops_schemas", ROOT / "compressops" / "_schemas.py")
    schemas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schemas)
    schemas.write_json()


write_schema_mirror()
ext_modules = [] if os.environ.get("COMPRESSOPS_BUILD_EXT") == "0" else [CMakeExtension("compressops._C")]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": cmake_build_ext},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
