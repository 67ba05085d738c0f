"""Named benchmark shapes; they live in compressops.bench.shapes so `python -m compressops bench` has them."""

from compressops.bench.shapes import DESIGN, MINILM, QUICK, SETS, SMOKE  # noqa: F401
