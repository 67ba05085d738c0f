"""The AMX emulation header (csrc/cpu/emulation/amx.h): a standalone C++ program checks it against scalar
loops; where the CPU has AMX, the same program built with the real intrinsics must produce the same bytes."""

import platform
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "tests" / "cpp" / "test_amx_emulation.cpp"
HEADER = ROOT / "csrc" / "cpu" / "emulation" / "amx.h"
FLAGS = ["-std=c++20", "-O1", "-mavx2", "-mfma", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}"]
AMX_FLAGS = ["-mamx-tile", "-mamx-int8", "-mamx-bf16"]
# Checks the program makes (every case of tests/cpp/test_amx_emulation.cpp); fewer means a case stopped running.
MIN_CHECKS = 227

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AMX and its emulation are x86-64"),
]


def _cpu_has_amx():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(m.group(1).split()) if m else set()
    return {"amx_tile", "amx_int8", "amx_bf16"} <= flags


def _compile(args, tmp_path, name="prog"):
    out = tmp_path / name
    return out, subprocess.run(["g++", *args, "-o", str(out)], capture_output=True, text=True)


def _build(tmp_path, name, extra=()):
    exe, build = _compile([*FLAGS, *extra, str(SRC)], tmp_path, name)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def _run(exe, seed):
    return subprocess.run([str(exe), str(seed)], capture_output=True, text=True, timeout=300)


def _summary(stdout):
    m = re.search(r"^(\d+) passed, (\d+) failed$", stdout, re.M)
    assert m, stdout[-3000:]
    return int(m.group(1)), int(m.group(2))


def _digests(stdout):
    return [line for line in stdout.splitlines() if line.startswith("digest ")]


def test_emulation_matches_scalar_loops_and_faults_like_hardware(tmp_path):
    seed = random.getrandbits(63)
    exe = _build(tmp_path, "amx_emulated")
    run = _run(exe, seed)
    assert "mode emulated" in run.stdout, run.stdout[:500]
    passed, failed = _summary(run.stdout)
    assert failed == 0 and run.returncode == 0, f"seed {seed}\n" + run.stdout[-6000:] + run.stderr[-2000:]
    assert passed >= MIN_CHECKS, run.stdout[-3000:]
    assert len(_digests(run.stdout)) >= 50


_ALL_INTRINSICS = """
#define TA 0
#define TB 1
#define TC 2
void kernel(const void* cfg, const void* a, const void* b, float* c, void* out) {
  _tile_loadconfig(cfg);
  _tile_loadd(TA, a, 64);
  _tile_stream_loadd(TB, b, 64);
  _tile_zero(TC);
  _tile_dpbssd(TC, TA, TB);
  _tile_dpbsud(TC, TA, TB);
  _tile_dpbusd(TC, TA, TB);
  _tile_dpbuud(TC, TA, TB);
  _tile_dpbf16ps(TC, TA, TB);
  _tile_stored(TC, c, 64);
  _tile_storeconfig(out);
  _tile_release();
}
"""


# C++17 here; the main program builds as C++20 with <immintrin.h> first.
@pytest.mark.parametrize("order", ["header_first", "immintrin_first"])
def test_header_compiles_with_immintrin_in_either_order(tmp_path, order):
    includes = ['#include "cpu/emulation/amx.h"', "#include <immintrin.h>"]
    if order == "immintrin_first":
        includes.reverse()
    src = tmp_path / "tu.cpp"
    src.write_text("\n".join(includes) + _ALL_INTRINSICS)
    _, build = _compile(["-std=c++17", "-O1", "-mavx2", "-mfma", "-Wall", "-Wextra", "-Werror",
                         f"-I{ROOT / 'csrc'}", "-c", str(src)], tmp_path, "tu.o")
    assert build.returncode == 0, build.stderr[-4000:]


@pytest.mark.parametrize("body, message", [
    ("_tile_dpbssd(1, 1, 2);", "three different tiles"),
    ("_tile_dpbf16ps(3, 4, 3);", "three different tiles"),
    ("constexpr int t = 0; _tile_zero(t);", "COMPRESSOPS_AMX_EMU_TILE_t"),
    ("_tile_loadd(8, nullptr, 64);", "COMPRESSOPS_AMX_EMU_TILE_8"),
])
def test_tile_numbers_the_hardware_rejects_do_not_compile(tmp_path, body, message):
    src = tmp_path / "bad.cpp"
    src.write_text(f'#include "cpu/emulation/amx.h"\nvoid f() {{ {body} }}\n')
    _, build = _compile(["-std=c++20", "-mavx2", "-mfma", f"-I{ROOT / 'csrc'}", "-c", str(src)], tmp_path, "bad.o")
    assert build.returncode != 0
    assert message in build.stderr, build.stderr[-3000:]


def test_header_refuses_real_amx_flags(tmp_path):
    src = tmp_path / "real.cpp"
    src.write_text('#include "cpu/emulation/amx.h"\n')
    _, build = _compile(["-std=c++20", "-mavx2", "-mfma", *AMX_FLAGS, f"-I{ROOT / 'csrc'}", "-c", str(src)],
                        tmp_path, "real.o")
    assert build.returncode != 0
    assert "replaces the AMX intrinsics" in build.stderr, build.stderr[-3000:]


def test_hardware_build_compiles_and_matches_emulation_where_the_cpu_runs_amx(tmp_path):
    """The program built with the real AMX intrinsics always compiles (so that path keeps building on
    machines without AMX); on a CPU that runs AMX it must also give the emulation's results, case for case."""
    hardware_exe = _build(tmp_path, "amx_hardware", AMX_FLAGS)
    assert hardware_exe.exists()
    if not _cpu_has_amx():
        return  # nothing to compare against here; the emulation is checked against scalar loops above
    seed = random.getrandbits(63)
    emulated = _run(_build(tmp_path, "amx_emulated"), seed)
    hardware = _run(hardware_exe, seed)
    if hardware.returncode == 77:
        return  # Linux refused the tile state: AMX counts as absent, as it does for compressops itself
    assert "mode hardware" in hardware.stdout, hardware.stdout[:500] + hardware.stderr[-2000:]
    _, failed = _summary(hardware.stdout)
    assert failed == 0 and hardware.returncode == 0, f"seed {seed}\n" + hardware.stdout[-6000:]
    assert _summary(emulated.stdout)[1] == 0, emulated.stdout[-3000:]
    hw, emu = _digests(hardware.stdout), _digests(emulated.stdout)
    assert len(hw) == len(emu) >= 50
    assert [a for a, b in zip(hw, emu) if a != b] == [], f"seed {seed}: results differ between hardware and emulation"
