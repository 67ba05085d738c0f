"""Benchmark output: a markdown table on stdout, JSON with every row, a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

# Appended to the time of a row that was timed while other processes kept a core busy (row["void"]).
VOID_MARK = "†"


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]], marked: str | None = None) -> str:
    """rows: dicts; columns: (key, header, format spec); missing values print as '-'.

    marked: the key of the column whose cell gets VOID_MARK in rows with a true "void" field.
    """
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cell = "-" if v is None else (format(v, fmt) if fmt else str(v))
            cells.append(cell + VOID_MARK if key == marked and r.get("void") and v is not None else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, meta: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def plot_speedups(path: Path, rows: list[dict], title: str, key: str = "speedup_fp32",
                  ylabel: str = "speedup vs fp32 nn.Linear", group=None) -> bool:
    """Bar chart of rows[key] per group and implementation; False if matplotlib is missing.

    group: row -> x-axis label (default "<shape> <threads>thr"); rows without `key` are left out.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    group = group or (lambda r: f"{r['shape']} {r['threads']}thr")
    rows = [r for r in rows if r.get(key) is not None]
    # One bar group per label: keyed on the shape alone, later thread counts were dropped.
    labels = list(dict.fromkeys(group(r) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 1.2), 4.5))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        vals = [next((r[key] for r in rows if group(r) == g and r["impl"] == impl), 0) for g in labels]
        ax.bar([x + i * width for x in range(len(labels))], vals, width, label=impl)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
