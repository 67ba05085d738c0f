"""Benchmark output: a markdown table on stdout, JSON with every row, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows: dicts; columns: (key, header, format spec); missing values print as '-'."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def plot_speedups(path: Path, rows: list[dict], title: str) -> bool:
    """Bar chart of speedup vs fp32 per shape and implementation; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if r.get("speedup_fp32") is not None]
    # One group per (shape, thread count): keyed on the shape alone, later thread counts were dropped.
    shapes = list(dict.fromkeys((r["shape"], r["threads"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(shapes) * 1.2), 4.5))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        vals = [next((r["speedup_fp32"] for r in rows if (r["shape"], r["threads"]) == s and r["impl"] == impl), 0)
                for s in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], vals, width, label=impl)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))], [f"{s} {t}thr" for s, t in shapes],
                  rotation=30, ha="right", fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speedup vs fp32 nn.Linear")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
