"""Benchmark Sparse24Linear and CSRLinear against dense and sparse peers. See compressops/bench/sparse.py.

    .venv/bin/python benchmarks/bench_sparse.py            # DESIGN.md shapes, 1 and 2 threads
    .venv/bin/python benchmarks/bench_sparse.py --quick    # the issue's target shapes only
"""

from compressops.bench.sparse import main

if __name__ == "__main__":
    raise SystemExit(main())
