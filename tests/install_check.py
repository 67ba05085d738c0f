"""Checks an installed compressops from outside the checkout: `make check-sdist` and `make test-torch` run it
in their own venvs (python -P, so the checkout's compressops/ is not what gets imported).

    python -P tests/install_check.py fingerprint > before.txt     # torch's version and files, before
    python -P tests/install_check.py check --torch-fingerprint before.txt

`check` fails (exit 1, the failures on stderr) unless: torch is the one fingerprinted before (same version,
same files: a reinstall gives new inodes), compressops imports from site-packages with
COMPRESSOPS_REQUIRE_NATIVE=1, `python -m compressops.info` says the native library is loaded, an int8
Linear converted with co.convert runs a native CPU kernel (no NativeFallbackWarning) and matches the
reference, and the shipped .so files carry no RUNPATH but $ORIGIN and $ORIGIN/../torch/lib (which must be
this torch's lib directory). It prints the newest glibc symbol version the libraries need.

tests/test_packaging.py imports runpaths() and bad_runpaths() for the in-place build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

# What a wheel's libraries may search: their own directory, and torch's lib directory in the same
# site-packages (for a C++ process that dlopens libcompressops_ops.so; Python has loaded libtorch first).
WHEEL_RUNPATHS = {"_C.abi3.so": ["$ORIGIN"], "libcompressops_ops.so": ["$ORIGIN", "$ORIGIN/../torch/lib"]}


def runpaths(lib: Path) -> list[str] | None:
    """The DT_RUNPATH and DT_RPATH entries of the ELF file `lib`, in order; None without readelf."""
    if shutil.which("readelf") is None:
        return None
    out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    entries: list[str] = []
    for m in re.finditer(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out):
        entries += m.group(1).split(":")
    return entries


def bad_runpaths(lib: Path, allowed: list[str]) -> list[str]:
    """The RUNPATH entries of `lib` that are not in `allowed` ([] also when readelf is missing)."""
    return [p for p in runpaths(lib) or [] if p not in allowed]


def glibc_needed(libs: list[Path]) -> str:
    """The newest GLIBC_x.y symbol version any of `libs` needs (objdump -T), or "?" without objdump."""
    if shutil.which("objdump") is None:
        return "?"
    versions = set()
    for lib in libs:
        out = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True, check=True).stdout
        versions |= {tuple(int(v) for v in m.split(".")) for m in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", out)}
    return ".".join(map(str, max(versions))) if versions else "?"


def torch_fingerprint() -> str:
    """torch's version, location, and the inode and mtime of its core library and its RECORD."""
    import torch

    root = Path(torch.__file__).parent
    files = [root / "lib" / "libtorch_cpu.so", *sorted(root.parent.glob("torch-*.dist-info/RECORD"))]
    parts = [f"torch {torch.__version__} {torch.__file__}"]
    for p in files:
        st = p.stat()
        parts.append(f"{p.name} inode={st.st_ino} mtime_ns={st.st_mtime_ns}")
    return "\n".join(parts)


def check(fingerprint_file: str | None) -> list[str]:
    """Every check in the module docstring; returns the failures."""
    failures = []
    if fingerprint_file is not None:
        before, now = Path(fingerprint_file).read_text().strip(), torch_fingerprint()
        if before != now:
            failures.append(f"torch changed during the install:\nbefore:\n{before}\nafter:\n{now}")
    os.environ["COMPRESSOPS_REQUIRE_NATIVE"] = "1"
    import torch

    import compressops as co
    from compressops import reference
    from compressops.isa import last_kernel_isa

    pkg = Path(co.__file__).parent
    print(f"compressops {co.__version__} from {pkg}, torch {torch.__version__}")
    if "site-packages" not in pkg.parts:
        failures.append(f"compressops imported from {pkg}, not an installed copy")
    info = subprocess.run([sys.executable, "-P", "-m", "compressops.info"], capture_output=True, text=True, check=False)
    if info.returncode != 0 or "native library: loaded" not in info.stdout:
        failures.append(f"compressops.info does not report the native library loaded:\n{info.stdout}{info.stderr}")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    co.convert(model, co.Int8())
    x = torch.randn(5, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", co._loader.NativeFallbackWarning)
        with torch.no_grad():
            lin = model[0]
            y = lin(x)
            ref = reference.int8_linear(x, lin.weight_packed, lin.weight_scale, lin.bias, act_scale=lin.act_scale)
            model(x)
    kernel = last_kernel_isa("int8_linear")
    print(f"int8_linear ran the native {kernel or '?'} kernel; max |native - reference| = "
          f"{(y - ref).abs().max().item():.3g}")
    if not kernel:
        failures.append("int8_linear did not run a native CPU kernel")
    if not torch.equal(y, ref):
        failures.append("int8_linear's native output differs from the reference")

    libs = sorted(pkg.glob("*.so"))
    if sorted(p.name for p in libs) != sorted(WHEEL_RUNPATHS):
        failures.append(f"shipped libraries: {[p.name for p in libs]}, expected {sorted(WHEEL_RUNPATHS)}")
    for lib in libs:
        rp = runpaths(lib)
        print(f"{lib.name}: RUNPATH {rp}")
        if rp is not None and rp != WHEEL_RUNPATHS.get(lib.name):
            failures.append(f"{lib.name}: RUNPATH {rp}, expected {WHEEL_RUNPATHS.get(lib.name)}")
    if (pkg.parent / "torch" / "lib").resolve() != (Path(torch.__file__).parent / "lib").resolve():
        failures.append("$ORIGIN/../torch/lib is not the running torch's lib directory")
    print(f"newest glibc symbol version needed: GLIBC_{glibc_needed(libs)}")
    return failures


def main(argv: list[str]) -> int:
    if argv[:1] == ["fingerprint"]:
        print(torch_fingerprint())
        return 0
    if argv[:1] == ["check"]:
        fp = argv[argv.index("--torch-fingerprint") + 1] if "--torch-fingerprint" in argv else None
        failures = check(fp)
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        print("install check: " + ("FAILED" if failures else "ok"))
        return 1 if failures else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
