"""Benchmark conversion time per 4096x4096 layer for every family. See compressops/bench/convert.py.

    .venv/bin/python benchmarks/bench_convert.py                       # every config, 1 and 2 threads
    .venv/bin/python benchmarks/bench_convert.py --configs int4,int8   # a subset
"""

from compressops.bench.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
