"""Run-time ISA selection: detection, overrides (API, env), fallback to lower levels."""

import os
import subprocess
import sys

import pytest
import torch

import compressops as co
from compressops import ops
from compressops.isa import (EMULATED_SUFFIX, emulated_isas, kernel_isas, kernel_level_for, last_kernel_isa, levels,
                             runnable_isa)

from .helpers import ISA_LEVELS, X86_64, randn_nonzero, requires_native

pytestmark = requires_native


def test_active_is_detected_and_runnable():
    assert co.isa() in levels()
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
    missing = [lv for lv in levels() if lv not in ISA_LEVELS]
    if missing:
        with pytest.raises(RuntimeError, match="this CPU supports up to"):
            co.set_isa(missing[0])
        assert co.isa() == co.detected_isa()
    with pytest.raises(ValueError, match="has no emulated build"):
        co.set_isa("avx2", emulated=True)
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        co.set_isa("avx9000+emulated")


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


def test_vnni_runs_k_beyond_the_int32_range_of_its_biased_sums():
    """The VNNI kernel's biased sums wrap past K ~ 66000; its modular correction keeps it exact, so
    it runs every K the pack holds instead of declining to avx2."""
    from compressops import ops, reference
    from compressops.formats import int8 as f8

    w, s = f8.quantize_weight(torch.randn(16, 70000))
    p = ops.int8_pack_weight(w)
    x = torch.randn(1, 70000)
    with co.cpu_isa(runnable_isa("avx512_vnni")):  # natively, or its emulated build on CPUs without it
        y = ops.int8_linear(x, p, s)
        assert torch.ops.compressops._last_kernel_isa("int8_linear").startswith("avx512_vnni")
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


_INT8_CHILD = ("import torch, compressops as co; from compressops import ops, reference;"
               "from compressops.formats import int8 as f;"
               "w, s = f.quantize_weight(torch.randn(48, 200)); p = ops.int8_pack_weight(w); x = torch.randn(5, 200);"
               "y = ops.int8_linear(x, p, s);"
               "print(co.isa(), torch.ops.compressops._last_kernel_isa('int8_linear'),"
               " torch.equal(y, reference.int8_linear(x, p, s)))")


@pytest.mark.skipif(not X86_64, reason="emulated levels are x86-64 builds")
def test_every_level_runs_here_natively_or_emulated():
    """No level is out of reach on an x86-64 machine: what the CPU lacks, the emulated build runs."""
    for lv in levels():
        assert runnable_isa(lv), f"{lv}: neither native here nor emulated in this build (is simde-py installed?)"
    assert [e[: -len(EMULATED_SUFFIX)] for e in emulated_isas()] == ["avx512", "avx512_vnni", "amx"]


@pytest.mark.skipif(not X86_64, reason="emulated levels are x86-64 builds")
def test_emulated_level_from_the_environment_in_a_new_process():
    env = {**os.environ, "COMPRESSOPS_ISA": "amx+emulated"}
    out = subprocess.run([sys.executable, "-c", _INT8_CHILD], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["amx+emulated", "avx512_vnni+emulated", "True"]


def test_emulation_is_never_chosen_by_detection():
    env = {k: v for k, v in os.environ.items() if k not in ("COMPRESSOPS_ISA", "ATEN_CPU_CAPABILITY")}
    out = subprocess.run([sys.executable, "-c", _INT8_CHILD], capture_output=True, text=True, env=env, check=True)
    active, ran, exact = out.stdout.split()
    assert active == co.detected_isa() and EMULATED_SUFFIX not in ran and exact == "True"


@pytest.mark.skipif(not X86_64, reason="emulated levels are x86-64 builds")
def test_cpu_isa_emulated_context_manager_and_info():
    from compressops import ops, reference
    from compressops.formats import int8 as f8
    from compressops.info import info

    w, s = f8.quantize_weight(torch.randn(24, 100))
    p, x = ops.int8_pack_weight(w), torch.randn(3, 100)
    before = co.isa()
    with co.cpu_isa("amx", emulated=True):
        assert co.isa() == "amx+emulated"
        y = ops.int8_linear(x, p, s)
        assert last_kernel_isa("int8_linear") == kernel_level_for("int8_linear", "amx+emulated")
        assert info()["ops"]["int8_linear"]["cpu_kernel_here"] == "avx512_vnni+emulated"
    assert co.isa() == before
    assert torch.equal(y, reference.int8_linear(x, p, s))


def test_cpu_isa_context_manager_is_thread_local():
    """The context changes the calling thread's level only; set_isa changes the process's."""
    import threading

    seen = []
    entered, done = threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen.append(co.isa())
        done.set()

    before = co.isa()
    t = threading.Thread(target=other)
    t.start()
    with co.cpu_isa("scalar"):
        assert co.isa() == "scalar"
        entered.set()
        done.wait(10)
    t.join()
    assert seen == [before] and co.isa() == before


def test_interleaved_contexts_in_two_threads_leave_the_process_unchanged():
    """Issue 18: T1 enters, T2 enters, T1 leaves, T2 leaves; each thread ran at its own level
    throughout and the process ends where it started."""
    import threading

    before = co.isa()
    levels = [lv for lv in ("scalar", "avx2") if lv in co.available_isas()]
    if len(levels) < 2:
        pytest.skip("needs two native levels")
    steps = [threading.Event() for _ in range(4)]
    seen = {}
    x = randn_nonzero(3, 64)

    def worker(i, level, enter_at, leave_at):
        steps[enter_at].wait(10)
        with co.cpu_isa(level):
            steps[enter_at + 1].set()
            steps[leave_at].wait(10)
            ops.int8_quantize_activation(x)
            seen[i] = (co.isa(), last_kernel_isa("int8_quantize_activation"))
        if leave_at + 1 < len(steps):
            steps[leave_at + 1].set()

    t1 = threading.Thread(target=worker, args=(1, levels[0], 0, 2))
    t2 = threading.Thread(target=worker, args=(2, levels[1], 1, 3))
    t1.start()
    t2.start()
    steps[0].set()
    t1.join(20)
    t2.join(20)
    assert seen[1] == (levels[0], levels[0]) and seen[2] == (levels[1], levels[1])
    assert co.isa() == before


def test_fallback_chains_come_from_the_kernel_records():
    """Every op's level at each active level follows from _kernel_isas alone (no hand-kept maps)."""
    assert kernel_isas("int8_pack_weight") == []
    assert kernel_isas("binary_pack_activation") == ["scalar", "avx2"]
    assert "avx512_vnni" in kernel_isas("binary_conv2d") and "avx512_vnni" in kernel_isas("int8_linear")
    assert kernel_level_for("int4_linear", "amx+emulated") == "avx512_vnni+emulated"
    assert kernel_level_for("int4_linear", "avx512+emulated") == "avx2"
    assert kernel_level_for("int8_linear", "avx512+emulated") == "avx2"
    assert kernel_level_for("binary_conv2d", "amx+emulated") == "avx512_vnni+emulated"
    with pytest.raises(RuntimeError, match="no CPU kernel record"):
        kernel_isas("no_such_op")
