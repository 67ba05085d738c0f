"""compressops.report: what convert did to each layer, and what the whole model holds now.

Every module that directly holds tensors (parameters or persistent buffers: what state_dict saves)
gets a row, converted or not, and the totals cover the whole model:

- dense bytes: what the original float model's state_dict holds, each floating tensor at float32
  (4 bytes an element, whatever its dtype now; a compressed layer counts the float32 weight and
  bias it replaced), each integer/bool tensor at its own element size;
- bytes now: what the model's state_dict holds now, each tensor at its own size (a compressed
  layer: its canonical format; the prepacked layout it keeps in memory is derived, not stored);
- a tensor shared by several modules (tied weights) counts once, in the first row that holds it;
  later rows say whom they share it with. A module reachable under several names gets one row.

So `ratio` is close to the ratio of the file sizes of the float model's and the converted model's
saved state (compressops.save), whose only other bytes are headers.

A model converted with only_if_faster=True also has, for every layer convert timed, its measured
speedup (dense time / compressed time; a "speedup" column) and, in the note, the input shape it was
timed at, and for a layer kept dense why ("slower than dense at [8, 128, 384]: 0.93x; ...").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import adapter_for, as_linear
from .configs import compressed_types
from .convert import REPORT_ATTR, candidate_types
from .speedcheck import SPEED_ATTR


@dataclass
class LayerRow:
    name: str
    module: str          # class name of the module now in the model
    format: str          # the compressed module's format_label, or "dense"
    shape: str
    dense_bytes: int     # its tensors in the float model (floating ones at float32); 0 when tied to an earlier row
    bytes: int           # what it holds now (a compressed module: its canonical format)
    note: str            # why a module stayed dense; which tensors it shares; where it was timed
    speedup: float | None = None  # only_if_faster's measured dense time / compressed time (None: not timed)


class Report:
    """Per-module rows plus totals (the totals are the sums over the rows).
    str() gives a text table; to_markdown() a markdown one."""

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
        if any(r.speedup is not None for r in self.rows):  # the column only for a model convert timed
            head.insert(6, "speedup")
            for row, r in zip(body, self.rows):
                row.insert(6, "" if r.speedup is None else f"{r.speedup:.2f}x")
            total.insert(6, "")
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


def _own_tensors(mod: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of what state_dict saves of `mod` itself: parameters and persistent buffers."""
    out = [(n, p) for n, p in mod._parameters.items() if p is not None]
    out += [(n, b) for n, b in mod._buffers.items() if b is not None and n not in mod._non_persistent_buffers_set]
    return out


def _identity(t: torch.Tensor) -> tuple:
    """What makes two tensors one stored tensor (the same memory, offset, shape and dtype)."""
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def _fp32_bytes(t: torch.Tensor) -> int:
    return t.numel() * (4 if t.is_floating_point() else t.element_size())


def _under(name: str, parents: list[str]) -> bool:
    return any(name.startswith(p + ".") if p else True for p in parents)


def report(model: nn.Module) -> Report:
    """One row per module of `model` that holds tensors or is compressed (see the module docstring
    for what the byte columns count).

    Args:
        model: any nn.Module, converted by compressops.convert or not.
    Returns:
        Report: rows in named_modules order (a module under several names once, at its first), a
        converted one with its format and canonical bytes, a dense one with why it stayed dense:
        convert's reason for a type some family converts, "<Type>: no family converts <Type>"
        otherwise; a layer convert(only_if_faster=True) timed also with its speedup.
    """
    skipped = getattr(model, REPORT_ATTR, {})
    speeds = getattr(model, SPEED_ATTR, {})
    compressed, candidates = compressed_types(), candidate_types()
    rows, seen, inside = [], {}, []  # seen: tensor identity -> "module.tensor" that holds it first
    names = {id(m): n for n, m in model.named_modules()}
    for name, mod in model.named_modules():
        if _under(name, inside):
            continue  # a compressed module's canonical bytes cover its children
        if isinstance(mod, compressed):
            # Compressed modules describe themselves: format_label, shape_label, dense_bytes()
            # (what the layer they replace held, at float32) and compressed_bytes() (canonical).
            inside.append(name)
            source = getattr(mod, "tied_source", lambda: None)()
            note = f"reads {names.get(id(source), 'another module')}'s compressed weight (tied; counted there)" \
                if source is not None else ""
            timed = speeds.get(name)
            if timed is not None:
                note = "; ".join(filter(None, [timed.describe(), note]))
            rows.append(LayerRow(name, type(mod).__name__, mod.format_label, mod.shape_label,
                                 mod.dense_bytes(), mod.compressed_bytes(), note,
                                 None if timed is None else timed.speedup))
            continue
        tensors = _own_tensors(mod)
        if not tensors:
            continue
        dense = now = 0
        tied = []
        for tname, t in tensors:
            key = _identity(t)
            if t.numel() and key in seen:
                tied.append(f"{tname} tied to {seen[key]}")
                continue
            seen[key] = f"{name}.{tname}" if name else tname
            dense += _fp32_bytes(t)
            now += t.numel() * t.element_size()
        cls = type(mod).__name__
        if isinstance(mod, candidates) or adapter_for(mod) is not None:
            note = skipped.get(name, "not converted")
        else:
            note = f"{cls}: no family converts {cls}"
        if tied:
            note += f" ({'; '.join(tied)}, counted there)"
        # an adapted module (GPT-2's Conv1D) shows the [out, in] shape of the Linear it stands for
        shape_of = as_linear(mod).weight if adapter_for(mod) is not None else getattr(mod, "weight", None)
        shape_of = shape_of if isinstance(shape_of, torch.Tensor) else tensors[0][1]
        timed = speeds.get(name)
        rows.append(LayerRow(name, cls, "dense", "x".join(map(str, shape_of.shape)) or "scalar", dense, now, note,
                             None if timed is None else timed.speedup))
    return Report(rows)
