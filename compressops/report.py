"""compressops.report: what convert did to each layer, and what it saved."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adapters import adapter_for, as_linear
from .configs import compressed_types
from .convert import REPORT_ATTR, candidate_types


@dataclass
class LayerRow:
    name: str
    module: str          # class name of the layer now in the model
    format: str          # the compressed module's format_label, or "dense"
    shape: str
    dense_bytes: int     # fp32 weight + bias
    bytes: int           # what the layer holds now (canonical format)
    note: str            # why a layer stayed dense


class Report:
    """Per-layer rows plus totals. str() gives a text table; to_markdown() a markdown one."""

    def __init__(self, rows: list[LayerRow]):
        self.rows = rows

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.rows)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else 1.0

    def _table(self) -> list[list[str]]:
        head = ["layer", "module", "format", "shape", "fp32 KB", "now KB", "note"]
        body = [[r.name, r.module, r.format, r.shape, f"{r.dense_bytes / 1024:.1f}", f"{r.bytes / 1024:.1f}", r.note]
                for r in self.rows]
        total = ["total", "", "", "", f"{self.dense_bytes / 1024:.1f}", f"{self.bytes / 1024:.1f}",
                 f"{self.ratio:.2f}x smaller"]
        return [head] + body + [total]

    def to_markdown(self) -> str:
        t = self._table()
        lines = ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
        lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
        return "\n".join(lines)

    def __str__(self) -> str:
        t = self._table()
        widths = [max(len(r[i]) for r in t) for i in range(len(t[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in t)

    __repr__ = __str__


def _dense_bytes(mod: nn.Module) -> int:
    return sum(4 * p.numel() for p in mod.parameters(recurse=False))


def report(model: nn.Module) -> Report:
    """One row per layer of `model` that a family could convert: converted (format, bytes) or dense (and why)."""
    skipped = getattr(model, REPORT_ATTR, {})
    compressed, candidates = compressed_types(), candidate_types()
    rows = []
    for name, mod in model.named_modules():
        if isinstance(mod, compressed):
            # Compressed modules describe themselves: format_label, shape_label, dense_bytes()
            # (fp32 weight + bias of the layer they replace) and compressed_bytes() (canonical buffers).
            rows.append(LayerRow(name, type(mod).__name__, mod.format_label, mod.shape_label,
                                 mod.dense_bytes(), mod.compressed_bytes(), ""))
        elif isinstance(mod, candidates) or adapter_for(mod) is not None:
            # an adapted module (GPT-2's Conv1D) shows the [out, in] shape of the Linear it stands for
            shape = as_linear(mod).weight.shape
            b = sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False))
            rows.append(LayerRow(name, type(mod).__name__, "dense", "x".join(map(str, shape)),
                                 _dense_bytes(mod), b, skipped.get(name, "not converted")))
    return Report(rows)
