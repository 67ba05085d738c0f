"""Run-time ISA selection: detection, overrides (API, env), fallback to lower levels."""

import os
import subprocess
import sys

import pytest
import torch

import compressops as co

from .helpers import ISA_LEVELS, requires_native

pytestmark = requires_native


def test_active_is_detected_and_runnable():
    assert co.isa() in ("scalar", "avx2", "avx512", "avx512_vnni", "amx")
    assert co.detected_isa() in ISA_LEVELS
    assert "scalar" in ISA_LEVELS
    assert co.isa() == co.detected_isa() or os.environ.get("COMPRESSOPS_ISA") or os.environ.get("ATEN_CPU_CAPABILITY")


def test_context_manager_forces_and_restores():
    before = co.isa()
    with co.cpu_isa("scalar"):
        assert co.isa() == "scalar"
    assert co.isa() == before


def test_errors_for_unknown_or_unsupported_levels():
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        co.set_isa("sse9")
    missing = [lv for lv in ("avx2", "avx512", "avx512_vnni", "amx") if lv not in ISA_LEVELS]
    if missing:
        with pytest.raises(RuntimeError, match="this CPU supports up to"):
            co.set_isa(missing[0])
        assert co.isa() == co.detected_isa()


@pytest.mark.parametrize("var", ["COMPRESSOPS_ISA", "ATEN_CPU_CAPABILITY"])
def test_env_var_lowers_level_in_a_new_process(var):
    value = "scalar" if var == "COMPRESSOPS_ISA" else "default"
    code = ("import torch, compressops as co; from compressops import ops; from compressops.formats import int8 as f;"
            "w, s = f.quantize_weight(torch.randn(16, 40)); p = ops.int8_pack_weight(w);"
            "ops.int8_linear(torch.randn(2, 40), p, s);"
            "print(co.isa(), torch.ops.compressops._last_kernel_isa('int8_linear'))")
    env = {**os.environ, var: value}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["scalar", "scalar"]


def test_bad_env_value_is_a_clear_error_not_a_crash():
    code = "import torch, compressops as co; print(co.isa())"
    env = {**os.environ, "COMPRESSOPS_ISA": "avx9000"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "unknown CPU ISA level 'avx9000'" in res.stderr


@pytest.mark.skipif("avx512_vnni" not in ISA_LEVELS, reason="needs AVX-512 VNNI to test its decline path")
def test_vnni_declines_k_beyond_its_lane_bound():
    from compressops import ops, reference
    from compressops.formats import int8 as f8

    w, s = f8.quantize_weight(torch.randn(16, 70000))
    p = ops.int8_pack_weight(w)
    x = torch.randn(1, 70000)
    with co.cpu_isa("avx512_vnni"):
        y = ops.int8_linear(x, p, s)
        assert torch.ops.compressops._last_kernel_isa("int8_linear") == "avx2"
    assert torch.equal(y, reference.int8_linear(x, p, s))


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs Linux /proc/cpuinfo")
def test_detection_agrees_with_the_kernels_cpu_flags():
    """cpuid + xgetbv detection against the flags Linux reports for this CPU (and OS support)."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not {"avx", "xsave"} <= flags:
        pytest.skip("unusual CPU flags listing")
    tiers = [
        ("avx2", {"avx2", "fma", "f16c", "bmi2", "popcnt"}),
        ("avx512", {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}),
        ("avx512_vnni", {"avx512_vnni", "avx512_vpopcntdq", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg"}),
        ("amx", {"amx_tile", "amx_int8", "amx_bf16"}),
    ]
    expected = "scalar"
    for level, needed in tiers:
        if not needed <= flags:
            break
        expected = level
    assert co.detected_isa() == expected
