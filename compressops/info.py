"""`python -m compressops.info`: what was built, what loaded, and which kernel each op uses here."""

from __future__ import annotations

import platform

import torch

from . import _loader
from .isa import compiled_isas, detected_isa, isa, kernel_level_for
from ._schemas import SCHEMAS


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def info() -> dict:
    """Build info, load status, CPU levels and per-op kernels, as a dict."""
    from .ops import TRITON_CUDA_OPS, native_kernels

    loaded = _loader.native_loaded()
    ops = {}
    for op in SCHEMAS:
        keys = native_kernels(op) if loaded else []
        entry = {"native": keys or ["none (reference)"]}
        if op in TRITON_CUDA_OPS:
            entry["triton_cuda"] = TRITON_CUDA_OPS[op]
        if loaded and "CPU" in keys and list(torch.ops.compressops._kernel_isas(op)):
            entry["cpu_levels"] = list(torch.ops.compressops._kernel_isas(op))
            entry["cpu_kernel_here"] = kernel_level_for(op, isa()) or "scalar"
        ops[op] = entry
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "build_info": _loader.build_info(),
        "native_loaded": loaded,
        "load_error": _loader.load_error(),
        "detected_isa": detected_isa(),
        "active_isa": isa(),
        "compiled_isas": compiled_isas(),
        "cuda_available": torch.cuda.is_available(),
        "ops": ops,
    }


def main() -> None:
    d = info()
    print(f"compressops on {d['cpu']} (python {d['python']}, torch {d['torch']})")
    if d["native_loaded"]:
        print("  native library: loaded")
    else:
        print(f"  native library: NOT loaded: {d['load_error']}\n"
              f"  WARNING: every op runs its pure-PyTorch reference kernel, many times slower than the native one;\n"
              f"  {_loader.rebuild_advice()} (COMPRESSOPS_REQUIRE_NATIVE=1 makes this an import error)")
    bi = d["build_info"] or {}
    print(f"  built with: {bi.get('compiler', '?')}, torch {bi.get('torch_version', '?')}, "
          f"CUDA kernels compiled: {bi.get('cuda_compiled', '?')}")
    print(f"  CPU ISA: detected {d['detected_isa']}, active {d['active_isa']}, compiled {', '.join(d['compiled_isas'])}")
    print(f"  CUDA device available: {d['cuda_available']}")
    print("  ops:")
    for op, e in d["ops"].items():
        line = f"    {op:28s} native: {', '.join(e['native'])}"
        if "cpu_levels" in e:
            line += f"; CPU kernel here: {e['cpu_kernel_here']} (has {', '.join(e['cpu_levels'])})"
        if "triton_cuda" in e:
            line += "; CUDA: Triton"
        print(line)


if __name__ == "__main__":
    main()
