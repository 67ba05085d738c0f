"""Every compressed module gives the same answer when called from several Python threads at once
(inference servers share one model between request threads)."""

import threading

import pytest
import torch
from torch import nn

import compressops as co

from .helpers import randn_nonzero

CONFIGS = {
    "int8": (co.Int8(), "linear"),
    "int4": (co.Int4(group_size=32), "linear"),
    "sparse24": (co.Sparse24(), "linear"),
    "sparse24_int8": (co.Sparse24(dtype=torch.int8), "linear"),
    "csr": (co.CSR(sparsity=0.8), "linear"),
    "pq16": (co.PQ(num_centroids=16, subvector_dim=2, max_iter=5), "linear"),
    "pq256": (co.PQ(num_centroids=256, subvector_dim=4, max_iter=5), "linear"),
    "binary": (co.Binary(keep_first_last=False), "conv"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_concurrent_forward_matches_serial(name):
    config, kind = CONFIGS[name]
    if kind == "linear":
        model = nn.Sequential(nn.Linear(96, 80), nn.ReLU(), nn.Linear(80, 24))
        inputs = [randn_nonzero(m, 96) for m in (1, 3, 9, 17)]
    else:
        model = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.Hardtanh(), nn.Conv2d(24, 8, 3, padding=1))
        inputs = [randn_nonzero(n, 16, 9, 7) for n in (1, 2, 3, 1)]
    model = co.convert(model, config).eval()
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(5):
                    for j, x in enumerate(inputs):
                        results[(i, j)] = model(x)
                        assert torch.equal(results[(i, j)], expected[j])
        except Exception as e:  # surfaced below; an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == 4 * len(inputs)
