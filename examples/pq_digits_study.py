"""PQ accuracy study: an MLP on scikit-learn's digits, every layer product-quantized.

Trains a 64-512-512-512-10 MLP (fixed seed, a few seconds), then converts every Linear layer with
compressops.PQ over a grid of (subvector_dim d, num_centroids k) and reports test accuracy with
plain k-means codebooks and after the calibration-aware refinement (codebooks re-fitted for the
fixed codes to minimise each layer's output error on the training inputs), next to the
compression ratio (fp32 weights + biases / PQ codes + codebooks + biases) and fp32 accuracy.

    python examples/pq_digits_study.py            # full grid, prints a markdown table (~1-2 min)
    python examples/pq_digits_study.py --quick    # one cell (a smoke test)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import compressops as co


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    f = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return f(x_tr), torch.tensor(y_tr), f(x_te), torch.tensor(y_te)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def train(x, y, seed: int = 0, epochs: int = 30) -> nn.Module:
    torch.manual_seed(seed)
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean()) * 100


def model_bytes(model) -> tuple[int, int]:
    dense = comp = 0
    for m in model.modules():
        if isinstance(m, co.nn.PQLinear):
            dense += m.dense_bytes()
            comp += m.compressed_bytes()
    return dense, comp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one (d, k) cell, fewer epochs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # deterministic, and fast on a shared machine (tiny GEMMs)
    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_data()
    model = train(x_tr, y_tr, epochs=3 if args.quick else 15)
    fp32 = accuracy(model, x_te, y_te)
    grid = [(4, 16)] if args.quick else [(d, k) for k in (16, 256) for d in (1, 2, 4, 8)]
    rows = []
    for d, k in grid:
        plain = co.convert(copy.deepcopy(model), co.PQ(num_centroids=k, subvector_dim=d, refine=False))
        refined = co.convert(copy.deepcopy(model), co.PQ(num_centroids=k, subvector_dim=d), calibration_data=x_tr)
        dense, comp = model_bytes(refined)
        rows.append((d, k, dense / comp, accuracy(plain, x_te, y_te), accuracy(refined, x_te, y_te)))
    print(f"Digits MLP (64-512-512-512-10), fp32 test accuracy {fp32:.2f}% "
          f"({len(x_te)} test images); every Linear layer PQ-compressed:\n")
    print("| d | k | bits/weight | compression | k-means acc % | refined acc % | fp32 acc % |")
    print("|---|---|---|---|---|---|---|")
    for d, k, ratio, a_plain, a_ref in rows:
        bits = (k.bit_length() - 1) / d
        print(f"| {d} | {k} | {bits:.2f} | {ratio:.1f}x | {a_plain:.2f} | {a_ref:.2f} | {fp32:.2f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s; compression counts codes + codebooks + biases of every layer)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
