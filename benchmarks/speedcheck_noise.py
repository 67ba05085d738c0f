"""How far convert(only_if_faster=True)'s timing strays when nothing differs: an A/A test.

Each trial times a dense nn.Linear against a deep copy of itself with compressops.speedcheck.measure
(exactly what convert does per layer: warmup, interleaved rounds, LAYER_BUDGET_S, medians); a
perfect measurement reports 1.00x every time. The spread of these "speedups" is the noise that
speedcheck.NOISE_MARGIN must cover: a compressed layer measured inside it is not known to be faster.

    .venv/bin/python benchmarks/speedcheck_noise.py                  # MiniLM-L6 shapes, 2 threads
    .venv/bin/python benchmarks/speedcheck_noise.py --threads 1 --trials 50

Prints, per shape, the 5th/50th/95th percentiles of the measured speedup, how many trials landed
inside the margin, and the average cores other processes kept busy (a run above
speedcheck.BUSY_LOAD measures the neighbours, not the method).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from compressops import speedcheck
from compressops.bench.shapes import MINILM
from compressops.info import cpu_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--trials", type=int, default=30, help="measurements per shape (default 30)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.trials < 1:
        ap.error("--threads and --trials must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    margin = speedcheck.NOISE_MARGIN
    print(f"CPU: {cpu_model()}; {args.threads} thread(s); LAYER_BUDGET_S {speedcheck.LAYER_BUDGET_S}; "
          f"NOISE_MARGIN {margin}")
    print("| shape | trials | rounds | dense ms | p5 | p50 | p95 | inside margin | other load |")
    print("|---|---|---|---|---|---|---|---|---|")
    every = []
    for label, m, n, k in MINILM:
        dense = nn.Linear(k, n)
        twin = copy.deepcopy(dense)
        x = torch.randn(m, k)
        found = []
        o0, t0 = speedcheck.other_busy_seconds(), time.perf_counter()
        for _ in range(args.trials):
            found.append(speedcheck.measure(dense, twin, (x,), {}))
        o1 = speedcheck.other_busy_seconds()
        load = "?" if o0 is None or o1 is None else f"{(o1 - o0) / (time.perf_counter() - t0):.2f}"
        speedups = sorted(f.speedup for f in found)
        every += speedups
        n5 = len(speedups) // 20
        inside = sum(abs(s - 1) < margin for s in speedups)
        print(f"| {label} | {len(speedups)} | {statistics.median(f.rounds for f in found):.0f} | "
              f"{statistics.median(f.dense_s for f in found) * 1e3:.2f} | {speedups[n5]:.3f} | "
              f"{statistics.median(speedups):.3f} | {speedups[-1 - n5]:.3f} | {inside}/{len(speedups)} | {load} |")
    false_keep = sum(s >= 1 + margin for s in every)
    print(f"\nA copy of a dense layer measured >= {1 + margin:.2f}x (it would have been kept as 'faster'): "
          f"{false_keep}/{len(every)} trials")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
