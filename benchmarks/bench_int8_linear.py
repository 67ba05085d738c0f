"""Benchmark Int8Linear against dense and int8 peers. See compressops/bench/int8_linear.py.

    .venv/bin/python benchmarks/bench_int8_linear.py            # DESIGN.md shapes, 1 and 2 threads
    .venv/bin/python benchmarks/bench_int8_linear.py --quick    # the issue's target shapes only
"""

from compressops.bench.int8_linear import main

if __name__ == "__main__":
    raise SystemExit(main())
