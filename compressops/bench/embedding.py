"""embedding benchmark: the int8/int4 row gathers (Int8Embedding, Int4Embedding, a tied Int8Embedding
reading an Int8Linear's pack) against dense fp32 and bf16 nn.Embedding, in one process.

Rows per shape (V rows of D values, T indices) and thread count: each gather's time, the bytes of
table rows it reads per call over that time (row GB/s), and its output error against the float64
rows of the original fp32 table. A lookup is memory-bound: the fp32 gather reads 4*T*D bytes and
writes as many; the int8 one reads T*D (+ scales) and writes 4*T*D, so the target is to match or
beat fp32 nn.Embedding, never to fall behind it. Indices are uniform over V, so with V*D beyond the
last-level cache most rows come from DRAM.
"""

from __future__ import annotations

import torch
from torch import nn

import compressops as co
from compressops.bench import runner
from compressops.bench.runner import (
    GBS,
    IMPL,
    MEDIAN_US,
    REL_ERR,
    SHAPE,
    THREADS,
    X_BF16,
    X_FP32,
    Family,
    Group,
    Impl,
    Run,
    Speedup,
    Table,
    Target,
)
from compressops.nn import Int4Embedding, Int8Embedding, Int8Linear

FAMILY = "embedding"

# (name, V, D, T): token tables of real models, T = tokens looked up per call
DESIGN = [
    *[(f"gpt2 wte 50257x768 T={t}", 50257, 768, t) for t in (1, 128, 4096)],  # GPT-2 small token embedding
    ("minilm 30522x384 T=1024", 30522, 384, 1024),  # MiniLM-L6 word_embeddings, batch 8 x 128 tokens
    ("llama2 32000x4096 T=512", 32000, 4096, 512),  # Llama-2-7B embed_tokens
]
QUICK = [DESIGN[1], DESIGN[2], DESIGN[3]]
SMOKE = [("smoke 300x72 T=20", 300, 72, 20)]


class EmbeddingBench(Family):
    name, title, stem = FAMILY, "embedding gather", "embedding"
    shape_sets = {"design": DESIGN, "quick": QUICK, "smoke": SMOKE}
    speedups = [Speedup("speedup_fp32", "fp32 nn.Embedding"), Speedup("speedup_bf16", "bf16 nn.Embedding")]
    tables = [Table([SHAPE, THREADS, IMPL, MEDIAN_US, X_FP32, X_BF16, GBS, REL_ERR])]
    legend = ["row GB/s: table bytes the call reads (T rows, in the stored dtype) per second",
              "int8 (tied): Int8Embedding gathering from an Int8Linear's blocked pack (a tied lm_head's), one copy",
              "rel. err: against the float64 rows of the original fp32 table"]
    plot_ylabel = "speedup vs fp32 nn.Embedding"

    def groups(self, shape, run: Run):
        name, v, d, t = shape
        emb = nn.Embedding(v, d)
        ids = torch.randint(0, v, (t,))
        exact = emb.weight.detach().double()[ids]
        emb_bf16 = nn.Embedding(v, d, _weight=emb.weight.detach().bfloat16())
        q8 = Int8Embedding.from_float(emb)
        head = Int8Linear.from_float(nn.Linear(d, v, bias=False, device="meta"))
        head.weight_packed = co.ops.int8_pack_weight(q8.weight)
        head.weight_scale = q8.weight_scale.clone()
        tied = Int8Embedding.tied(emb, head)
        q4 = Int4Embedding.from_float(emb, co.Int4(group_size=32, embeddings=True))
        impls = [
            Impl("compressops int8", lambda: q8(ids), "ours", exact, t * (d + 4)),
            Impl("compressops int8 (tied)", lambda: tied(ids), "ours", exact, t * (d + 4)),
            Impl("compressops int4 g32", lambda: q4(ids), "ours", exact, t * (d // 2 + 2 * 4 * (d // 32 + 1))),
            Impl("fp32 nn.Embedding", lambda: emb(ids), "dense", exact, 4 * t * d),
            Impl("bf16 nn.Embedding", lambda: emb_bf16(ids), "dense", exact, 2 * t * d),
        ]
        yield Group(name, impls, {"v": v, "d": d, "t": t})

    def summary(self, rows, run: Run) -> None:
        shape = QUICK[0][0]
        runner.print_targets(rows, f"Targets ({shape}, 2 threads; measured, not asserted):", [
            Target("int8 gather", shape, "compressops int8", "fp32", "fp32 nn.Embedding", 1.0),
        ])


def main(argv=None) -> int:
    return runner.main(EmbeddingBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
