"""Binary conv benchmark: BinaryConv2d against fp32/bf16 nn.Conv2d and torch.ao int8 Conv2d.

Rows per shape (3x3, stride 1, padding 1; C=256 at 56x56 and C=512 at 28x28), batch N and thread
count, all in one process with medians:
  - compressops BinaryConv2d, fp32 NCHW-channels_last in and out (sign-and-pack included);
  - compressops binary_conv2d kernel alone (activations already packed);
  - fp32 and bf16 nn.Conv2d (channels_last; bf16 given bf16 input);
  - torch.ao quantized int8 Conv2d (static, x86 engine, channels_last, input already quantized:
    kernel only, the strongest int8 number torch offers).
A second table times two binary convs in a row (conv, BatchNorm, Hardtanh, conv, BatchNorm):
  - compressops BinaryChain (fused: the activations between the convs stay packed bits, the
    BatchNorms are folded);
  - the same BinaryConv2d layers unfused (float activations, BatchNorm and Hardtanh in between);
  - fp32 nn.Conv2d block (channels_last) and two torch.ao int8 Conv2d (quantized in, between, out).
The tables are then produced again in a subprocess with COMPRESSOPS_ISA=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 set before torch loads, so every library is limited to AVX2.
`binary GMAC/s` counts N*OC*OH*OW*C*KH*KW binary multiply-accumulates per second; `ceiling` is
the measured XNOR-popcount ceiling at that thread count (torch.ops.compressops.
_binary_xor_popcount_peak: the conv kernel's own inner loop over L1-resident data on every
thread, no tap bookkeeping or epilogue), and `% ceil` the binary rows' share of it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import statistics

import torch
from torch import nn

import compressops as co
from compressops.bench import report, timing
from compressops.nn import BinaryChain, BinaryConv2d

FULL_SHAPES = [(256, 56), (512, 28)]  # (C = OC, H = W)
QUICK_SHAPES = [(256, 56)]


def _ao_conv(conv: nn.Conv2d, x: torch.Tensor):
    """torch.ao static int8 Conv2d (x86 engine) and its quantized channels_last input."""
    import torch.ao.nn.quantized as nnq

    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    c_out = conv.out_channels
    w = conv.weight.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wq = torch.quantize_per_channel(w, (w.abs().flatten(1).amax(1) / 127).clamp_min(1e-8),
                                        torch.zeros(c_out, dtype=torch.long), 0, torch.qint8)
        q = nnq.Conv2d(conv.in_channels, c_out, conv.kernel_size, conv.stride, conv.padding)
        q.set_weight_bias(wq, conv.bias.detach())
        q.scale, q.zero_point = float(x.abs().max() / 64), 64
        xq = torch.quantize_per_tensor(x, float(x.abs().max() / 127), 128, torch.quint8)
    return q, xq.contiguous(memory_format=torch.channels_last)


def xor_popcount_ceiling_gmacs(samples: int = 7) -> float:
    """Median over `samples` runs of the measured XNOR-popcount ceiling (binary GMAC/s, all threads)."""
    torch.ops.compressops._binary_xor_popcount_peak(2000)  # warm the thread pool
    return statistics.median(torch.ops.compressops._binary_xor_popcount_peak(20000) / 1e9 for _ in range(samples))


def _batchnorm(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    bn.running_mean.normal_(0, 5)
    bn.running_var.uniform_(50, 200)
    return bn.eval()


def run_chain_table(shapes, batches, threads_list, min_run_time: float) -> list[dict]:
    """Two 3x3 convs in a row: BinaryChain (fused) vs the unfused binary layers, fp32 and int8."""
    rows = []
    old_threads = torch.get_num_threads()
    try:
        for c, hw in shapes:
            convs = [nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last) for _ in range(2)]
            bns = [_batchnorm(c), _batchnorm(c)]
            fp32 = nn.Sequential(convs[0], bns[0], nn.Hardtanh(), convs[1], bns[1]).eval()
            unfused = nn.Sequential(BinaryConv2d.from_float(convs[0]), bns[0], nn.Hardtanh(),
                                    BinaryConv2d.from_float(convs[1]), bns[1]).eval()
            chain = BinaryChain.from_modules(list(unfused))
            for n in batches:
                x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
                q1, xq = _ao_conv(convs[0], x)
                q2, _ = _ao_conv(convs[1], x)
                macs = 2 * n * c * c * hw * hw * 9
                for t in threads_list:
                    torch.set_num_threads(t)
                    impls = {
                        "BinaryChain (fused, packed between)": lambda: chain(x),
                        "BinaryConv2d x2 unfused (BN, Hardtanh in float)": lambda: unfused(x),
                        "fp32 conv-BN-Hardtanh-conv-BN": lambda: fp32(x),
                        "torch.ao int8 Conv2d x2 (kernel only)": lambda: q2(q1(xq)),
                    }
                    res = {}
                    with torch.inference_mode():
                        for name, fn in impls.items():
                            res[name] = timing.median_us(fn, min_run_time)
                    names = list(impls)
                    unf, base, int8 = res[names[1]], res[names[2]], res[names[3]]
                    for name, us in res.items():
                        binary = name.startswith("Binary")
                        rows.append({
                            "impl": name, "shape": f"2 x C={c} {hw}x{hw} 3x3", "n": n, "threads": t, "us": us,
                            "vs_fp32": base / us, "vs_int8": int8 / us, "vs_unfused": unf / us if binary else None,
                            "gmacs": macs / us / 1e3 if binary else None,
                        })
    finally:
        torch.set_num_threads(old_threads)
    return rows


def run_table(shapes, batches, threads_list, min_run_time: float) -> list[dict]:
    rows = []
    old_threads = torch.get_num_threads()
    try:
        for c, hw in shapes:
            conv = nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)
            bconv = BinaryConv2d.from_float(conv)
            conv_bf16 = nn.Conv2d(c, c, 3, padding=1).to(torch.bfloat16).to(memory_format=torch.channels_last)
            for n in batches:
                x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
                xb = x.bfloat16()
                xp = co.ops.binary_pack_activation(x)
                qconv, xq = _ao_conv(conv, x)
                macs = n * c * c * hw * hw * 9
                for t in threads_list:
                    torch.set_num_threads(t)
                    ceiling = xor_popcount_ceiling_gmacs()
                    impls = {
                        "BinaryConv2d (pack + conv)": lambda: bconv(x),
                        "binary_conv2d kernel (packed in)": lambda: co.ops.binary_conv2d(
                            xp, bconv.weight_bits, bconv.alpha, bconv.bias, c, (3, 3), (1, 1), (1, 1)),
                        "fp32 nn.Conv2d": lambda: conv(x),
                        "bf16 nn.Conv2d": lambda: conv_bf16(xb),
                        "torch.ao int8 Conv2d (kernel only)": lambda: qconv(xq),
                    }
                    res = {}
                    with torch.inference_mode():
                        for name, fn in impls.items():
                            res[name] = timing.median_us(fn, min_run_time)
                    fp32, int8 = res["fp32 nn.Conv2d"], res["torch.ao int8 Conv2d (kernel only)"]
                    for name, us in res.items():
                        binary = name.startswith(("Binary", "binary"))
                        rows.append({
                            "impl": name, "shape": f"C={c} {hw}x{hw} 3x3", "n": n, "threads": t, "us": us,
                            "vs_fp32": fp32 / us, "vs_int8": int8 / us,
                            "gmacs": macs / us / 1e3 if binary else None,
                            "ceiling": ceiling if binary else None,
                            "pct_ceiling": 100 * macs / us / 1e3 / ceiling if binary else None,
                            "isa": co.isa() if binary else os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
                        })
    finally:
        torch.set_num_threads(old_threads)
    return rows


COLUMNS = [("impl", "implementation", ""), ("shape", "shape", ""), ("n", "N", "d"), ("threads", "thr", "d"),
           ("us", "time (us)", ".0f"), ("vs_fp32", "x fp32", ".2f"), ("vs_int8", "x int8", ".2f"),
           ("gmacs", "binary GMAC/s", ".0f"), ("ceiling", "ceiling GMAC/s", ".0f"), ("pct_ceiling", "% ceil", ".0f"),
           ("isa", "isa", "")]
CHAIN_COLUMNS = [("impl", "implementation", ""), ("shape", "block", ""), ("n", "N", "d"), ("threads", "thr", "d"),
                 ("us", "time (us)", ".0f"), ("vs_fp32", "x fp32", ".2f"), ("vs_int8", "x int8", ".2f"),
                 ("vs_unfused", "x unfused", ".2f"), ("gmacs", "binary GMAC/s", ".0f")]


def _avx2_subprocess(argv: list[str]) -> list[dict]:
    env = dict(os.environ, COMPRESSOPS_ISA="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-m", "compressops.bench.binary_conv", "--child", *argv], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="C=256 56x56, N=1, 2 threads, short timings")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts (default 1 2)")
    ap.add_argument("--min-run-time", type=float, default=None)
    ap.add_argument("--no-avx2", action="store_true", help="skip the AVX2-limited table (subprocess)")
    ap.add_argument("--out", type=str, default="benchmarks/results/binary_conv.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    batches = [1] if args.quick else [1, 8]
    threads = args.threads or ([2] if args.quick else [1, 2])
    mrt = args.min_run_time or (0.1 if args.quick else 0.5)
    def both_tables():
        return ([dict(r, kind="conv") for r in run_table(shapes, batches, threads, mrt)]
                + [dict(r, kind="chain") for r in run_chain_table(shapes, batches, threads, mrt)])

    def print_tables(all_rows):
        print(report.markdown_table([r for r in all_rows if r["kind"] == "conv"], COLUMNS))
        print("\nTwo binary convs in a row (BinaryChain keeps the activations between them packed):\n")
        print(report.markdown_table([r for r in all_rows if r["kind"] == "chain"], CHAIN_COLUMNS))

    if args.child:
        print(json.dumps(both_tables()))
        return 0
    child_argv = (["--quick"] if args.quick else []) + ["--threads", *map(str, threads), "--min-run-time", str(mrt)]
    rows = both_tables()
    print(f"## Best ISA here (compressops {co.isa()}, oneDNN default)\n")
    print_tables(rows)
    avx2_rows = []
    if not args.no_avx2:
        avx2_rows = _avx2_subprocess(child_argv)
        print("\n## Every library limited to AVX2 (COMPRESSOPS_ISA=avx2, ONEDNN_MAX_CPU_ISA=AVX2)\n")
        print_tables(avx2_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "torch": torch.__version__,
            "compressops_isa": co.isa(), "quick": args.quick}
    report.write_json(out, meta, [dict(r, table="best") for r in rows] + [dict(r, table="avx2") for r in avx2_rows])
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
