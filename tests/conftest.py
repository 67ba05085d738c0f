"""Fresh random inputs every run: the seed changes per run and is printed so a failure can be replayed
with COMPRESSOPS_TEST_SEED=<seed>."""

import os
import random
import time
import zlib

import pytest
import torch

SEED = int(os.environ.get("COMPRESSOPS_TEST_SEED", str(int(time.time() * 1000) % 2**31)))


def pytest_report_header(config):
    import compressops as co

    return [f"compressops test seed: {SEED} (replay with COMPRESSOPS_TEST_SEED={SEED})",
            f"compressops: native={co._loader.native_loaded()} isa={co.isa()} available={co.available_isas()}"]


@pytest.fixture(autouse=True)
def _seed(request):
    # Per-test seed derived from the run seed (crc32, not hash(): str hashes change per process),
    # so a test's data depends on neither execution order nor PYTHONHASHSEED.
    s = (SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(s)
    random.seed(s)
    yield
