"""Named shape sets for the linear benchmarks: (name, M, N, K), each from a real model layer."""

# DESIGN.md section 7.
DESIGN = [
    # Llama-2-7B attention projections (q/k/v/o): 4096 -> 4096
    *[(f"4096x4096 M={m}", m, 4096, 4096) for m in (1, 8, 64, 512)],
    # Llama-2-7B MLP up/gate projection: 4096 -> 11008
    *[(f"11008x4096 M={m}", m, 11008, 4096) for m in (1, 8, 64, 512)],
]

# The target shapes only, for a run of a couple of minutes.
QUICK = [
    ("4096x4096 M=1", 1, 4096, 4096),
    ("4096x4096 M=64", 64, 4096, 4096),
]

# MiniLM-L6 (the demo model) at batch 8 x 128 tokens: attention projections and the MLP.
MINILM = [
    ("minilm qkv/out 384x384 M=1024", 1024, 384, 384),   # encoder.layer.*.attention.*
    ("minilm up 1536x384 M=1024", 1024, 1536, 384),      # encoder.layer.*.intermediate.dense
    ("minilm down 384x1536 M=1024", 1024, 384, 1536),    # encoder.layer.*.output.dense
]

# One tiny layer for `--smoke` (tests): does every implementation run, not how fast. N % 16 == 0 and
# K a multiple of 128 so the int4 peers (torch int4pack, onnxruntime blocks of 128) take it.
SMOKE = [("smoke 64x128 M=2", 2, 64, 128)]

SETS = {"design": DESIGN, "quick": QUICK, "minilm": MINILM, "smoke": SMOKE}
