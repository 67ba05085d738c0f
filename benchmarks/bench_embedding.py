"""Benchmark the int8/int4 embedding gathers (and the tied int8 gather from a linear pack) against fp32
and bf16 nn.Embedding. See compressops/bench/embedding.py.

    .venv/bin/python benchmarks/bench_embedding.py             # 1 and 2 threads
    .venv/bin/python benchmarks/bench_embedding.py --quick
"""

from compressops.bench.embedding import main

if __name__ == "__main__":
    raise SystemExit(main())
