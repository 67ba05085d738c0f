"""Benchmark MiniLM-L6 end to end: compressops int8 (eager and torch.compile) against fp32, torch.ao
dynamic int8 and onnxruntime fp32/int8. See compressops/bench/models.py.

    .venv/bin/python benchmarks/bench_models.py             # 8x128 and 1x128, 1 and 2 threads
    .venv/bin/python benchmarks/bench_models.py --quick     # 2 threads
"""

from compressops.bench.models import main

if __name__ == "__main__":
    raise SystemExit(main())
