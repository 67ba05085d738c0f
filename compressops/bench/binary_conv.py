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
ONEDNN_MAX_CPU_ISA=AVX2 set before torch loads, so every library is limited to AVX2 (--no-avx2 skips it).
`binary GMAC/s` counts N*OC*OH*OW*C*KH*KW binary multiply-accumulates per second; `ceiling` is
the measured XNOR-popcount ceiling at that thread count (torch.ops.compressops.
_binary_xor_popcount_peak: the conv kernel's own inner loop over L1-resident data on every
thread, no tap bookkeeping or epilogue), and `% ceil` the binary rows' share of it.
"""

from __future__ import annotations

import os
import statistics
import warnings

import torch
from torch import nn

import compressops as co
from compressops.bench import runner
from compressops.bench.runner import Family, Group, Impl, Run, Speedup, Table, Variant
from compressops.nn import BinaryChain, BinaryConv2d

FAMILY = "binary"


def _shapes(convs, batches):
    """(name, N, C = OC, H = W) for every conv (C, H) and batch N."""
    return [(f"C={c} {hw}x{hw} 3x3", n, c, hw) for c, hw in convs for n in batches]


SHAPES = {"design": _shapes([(256, 56), (512, 28)], (1, 8)), "quick": _shapes([(256, 56)], (1,)),
          "smoke": _shapes([(64, 8)], (1,))}


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


COLUMNS = [("impl", "implementation", ""), ("shape", "shape", ""), ("n", "N", "d"), ("threads", "thr", "d"),
           ("us", "time (us)", ".0f"), ("vs_fp32", "x fp32", ".2f"), ("vs_int8", "x int8", ".2f"),
           ("gmacs", "binary GMAC/s", ".0f"), ("ceiling", "ceiling GMAC/s", ".0f"), ("pct_ceiling", "% ceil", ".0f"),
           ("isa", "isa", "")]
CHAIN_COLUMNS = [("impl", "implementation", ""), ("shape", "block", ""), ("n", "N", "d"), ("threads", "thr", "d"),
                 ("us", "time (us)", ".0f"), ("vs_fp32", "x fp32", ".2f"), ("vs_int8", "x int8", ".2f"),
                 ("vs_unfused", "x unfused", ".2f"), ("gmacs", "binary GMAC/s", ".0f")]


class BinaryConvBench(Family):
    name, title, stem = FAMILY, "binary conv", "binary_conv"
    shape_sets = SHAPES
    min_run_time, quick_min_run_time = 0.5, 0.1
    speedups = [Speedup("vs_fp32", "fp32 "), Speedup("vs_int8", "torch.ao int8"),
                Speedup("vs_unfused", "BinaryConv2d x2 unfused", ("ours",))]
    tables = [Table(COLUMNS, kind="conv"),
              Table(CHAIN_COLUMNS, kind="chain",
                    title="Two binary convs in a row (BinaryChain keeps the activations between them packed):")]
    legend = ["binary GMAC/s: N*OC*OH*OW*C*KH*KW binary multiply-accumulates per second; ceiling: the measured "
              "XNOR-popcount ceiling at that thread count (the conv kernel's own inner loop over L1-resident data on "
              "every thread, no tap bookkeeping or epilogue); % ceil: the binary rows' share of it",
              "x int8: over torch.ao int8 Conv2d, the one peer (x86 engine, input already quantized: kernel only)"]
    variants = [Variant("avx2", "Every library limited to AVX2 (COMPRESSOPS_ISA=avx2, ONEDNN_MAX_CPU_ISA=AVX2)",
                        {"COMPRESSOPS_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})]
    main_heading, main_table = "Best ISA here (compressops {isa}, oneDNN default)", "best"
    plot_key, plot_ylabel = "vs_fp32", "speedup vs fp32 nn.Conv2d"

    def per_thread(self, run: Run) -> None:
        ceiling = xor_popcount_ceiling_gmacs(1 if run.smoke else 7)
        run.measured.setdefault("ceiling", {})[run.threads] = ceiling
        run.notes.append(f"{run.threads} thr: XNOR-popcount ceiling {ceiling:.0f} binary GMAC/s")

    def groups(self, shape, run: Run):
        name, n, c, hw = shape
        x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
        macs = n * c * c * hw * hw * 9
        yield Group(name, self._conv_impls(x, c), {"kind": "conv", "n": n, "macs": macs})
        yield Group(f"2 x {name}", self._chain_impls(x, c), {"kind": "chain", "n": n, "macs": 2 * macs})

    def _conv_impls(self, x: torch.Tensor, c: int) -> list[Impl]:
        conv = nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)
        bconv = BinaryConv2d.from_float(conv)
        conv_bf16 = nn.Conv2d(c, c, 3, padding=1).to(torch.bfloat16).to(memory_format=torch.channels_last)
        xb, xp = x.bfloat16(), co.ops.binary_pack_activation(x)
        qconv, xq = _ao_conv(conv, x)
        ours, lib = {"isa": co.isa()}, {"isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default")}
        return [Impl("BinaryConv2d (pack + conv)", lambda: bconv(x), "ours", fields=ours),
                Impl("binary_conv2d kernel (packed in)", lambda: co.ops.binary_conv2d(
                    xp, bconv.weight_packed, bconv.alpha, bconv.bias, (1, 1), (1, 1)), "ours", fields=ours),
                Impl("fp32 nn.Conv2d", lambda: conv(x), "dense", fields=lib),
                Impl("bf16 nn.Conv2d", lambda: conv_bf16(xb), "dense", fields=lib),
                Impl("torch.ao int8 Conv2d (kernel only)", lambda: qconv(xq), "peer", fields=lib)]

    def _chain_impls(self, x: torch.Tensor, c: int) -> list[Impl]:
        """conv, BatchNorm, Hardtanh, conv, BatchNorm: fused, unfused, fp32, int8."""
        convs = [nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last) for _ in range(2)]
        bns = [_batchnorm(c), _batchnorm(c)]
        fp32 = nn.Sequential(convs[0], bns[0], nn.Hardtanh(), convs[1], bns[1]).eval()
        unfused = nn.Sequential(BinaryConv2d.from_float(convs[0]), bns[0], nn.Hardtanh(),
                                BinaryConv2d.from_float(convs[1]), bns[1]).eval()
        chain = BinaryChain.from_modules(list(unfused))
        q1, xq = _ao_conv(convs[0], x)
        q2, _ = _ao_conv(convs[1], x)
        return [Impl("BinaryChain (fused, packed between)", lambda: chain(x), "ours"),
                Impl("BinaryConv2d x2 unfused (BN, Hardtanh in float)", lambda: unfused(x), "ours"),
                Impl("fp32 conv-BN-Hardtanh-conv-BN", lambda: fp32(x), "dense"),
                Impl("torch.ao int8 Conv2d x2 (kernel only)", lambda: q2(q1(xq)), "peer")]

    def finish(self, rows: list[dict], run: Run) -> None:
        for r in rows:
            if r["role"] == "ours":
                r["gmacs"] = r["macs"] / r["us"] / 1e3
                if r["kind"] == "conv":
                    r["ceiling"] = run.measured["ceiling"][r["threads"]]
                    r["pct_ceiling"] = 100 * r["gmacs"] / r["ceiling"]

    def plot_group(self, row: dict) -> str:
        return f"{row['shape']} N={row['n']} {row['threads']}thr"


def main(argv=None) -> int:
    return runner.main(BinaryConvBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
