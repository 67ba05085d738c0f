"""Benchmark BinaryConv2d against fp32/bf16 nn.Conv2d and torch.ao int8 Conv2d. See
compressops/bench/binary_conv.py.

    .venv/bin/python benchmarks/bench_binary_conv.py           # both shapes, N=1 and 8, 1 and 2 threads
    .venv/bin/python benchmarks/bench_binary_conv.py --quick   # C=256 56x56, N=1, 2 threads
"""

from compressops.bench.binary_conv import main

if __name__ == "__main__":
    raise SystemExit(main())
