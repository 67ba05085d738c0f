"""Benchmark PQLinear against dense, int8, plain-torch PQ and faiss fast scan. See compressops/bench/pq_linear.py.

    .venv/bin/python benchmarks/bench_pq_linear.py            # DESIGN.md shapes, 1 and 2 threads
    .venv/bin/python benchmarks/bench_pq_linear.py --quick    # the issue's target shapes only
"""

from compressops.bench.pq_linear import main

if __name__ == "__main__":
    raise SystemExit(main())
