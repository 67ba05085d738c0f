"""Fresh random inputs every run: the seed changes per run and is printed so a failure can be replayed
with COMPRESSOPS_TEST_SEED=<seed>."""

import os
import random
import time
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests (tests/test_properties.py): the default profile runs a few hundred examples per op in
# CI; `pytest --hypothesis-profile=long` runs 10^4. No example database: nothing is written into the
# checkout, and a failure replays from the blob it prints (@reproduce_failure). Their tensors come from
# seeds hypothesis draws, so the per-test torch seed below neither helps nor hinders them (hence the
# function-scoped autouse fixture is harmless to them).
_PROFILE = {"deadline": None, "database": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=200, **_PROFILE)
settings.register_profile("long", max_examples=10_000, **_PROFILE)
settings.load_profile("ci")

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
