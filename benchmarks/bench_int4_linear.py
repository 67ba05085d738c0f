"""Benchmark Int4Linear against dense and int4 peers. See compressops/bench/int4_linear.py.

    .venv/bin/python benchmarks/bench_int4_linear.py            # DESIGN.md shapes, 1 and 2 threads, cold rows
    .venv/bin/python benchmarks/bench_int4_linear.py --quick    # the issue's target shapes only
"""

from compressops.bench.int4_linear import main

if __name__ == "__main__":
    raise SystemExit(main())
