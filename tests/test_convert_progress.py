"""convert's progress bar (only for work that takes a while, or when asked) and its logging records."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import compressops as co
from compressops.nn import Int8Linear

convert_mod = importlib.import_module("compressops.convert")  # the module (co.convert is the function)


def _model(layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(32, 32) for _ in range(layers)], nn.LayerNorm(32), nn.Linear(32, 8))


@pytest.fixture
def slow_int8(monkeypatch):
    """Int8Linear.from_float taking 0.1 s more per layer, and a bar delay of 0.15 s."""
    original = Int8Linear.from_float.__func__

    def slow(cls, *args, **kwargs):
        time.sleep(0.1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Int8Linear, "from_float", classmethod(slow))
    monkeypatch.setattr(convert_mod, "PROGRESS_DELAY_S", 0.15)


def _bar_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if "compressops.convert" in line]


def test_no_bar_for_a_fast_conversion(capsys, monkeypatch):
    # a delay far above the conversion's time: a loaded test machine cannot make it "slow"
    monkeypatch.setattr(convert_mod, "PROGRESS_DELAY_S", 60.0)
    co.convert(_model(), co.Int8())
    assert _bar_lines(capsys.readouterr().err) == []


def test_bar_for_a_slow_conversion(capsys, slow_int8):
    co.convert(_model(4), co.Int8())
    lines = _bar_lines(capsys.readouterr().err)
    assert lines and "5/5" in lines[-1] and "layer" in lines[-1]


def test_progress_false_silences_a_slow_conversion(capsys, slow_int8):
    co.convert(_model(4), co.Int8(), progress=False)
    assert _bar_lines(capsys.readouterr().err) == []


def test_progress_true_forces_the_bar(capsys):
    co.convert(_model(), co.Int8(), progress=True)
    lines = _bar_lines(capsys.readouterr().err)
    assert lines and "4/4" in lines[-1]


def test_calibration_pass_has_its_bar(capsys):
    batches = [torch.randn(2, 32) for _ in range(3)]
    co.convert(_model(), co.Int8(act="static"), calibration_data=batches, progress=True)
    err = capsys.readouterr().err
    assert any("calibration" in line and "3/3" in line for line in _bar_lines(err))
    co.convert(_model(), co.Int8(act="static"), calibration_data=batches, progress=False)
    assert _bar_lines(capsys.readouterr().err) == []


def test_log_records_per_layer_and_summary(caplog):
    model = _model(2)
    with caplog.at_level(logging.DEBUG, logger="compressops"):
        co.convert(model, {"0": co.Int8(), "1": None, "*": co.Int4(group_size=32)}, progress=False)
    recs = [r for r in caplog.records if r.name == "compressops.convert"]
    layer = [r.getMessage() for r in recs if r.levelno == logging.DEBUG and "->" in r.getMessage()]
    dense = [r.getMessage() for r in recs if r.levelno == logging.DEBUG and "left dense" in r.getMessage()]
    summary = [r.getMessage() for r in recs if r.levelno == logging.INFO]
    assert len(layer) == 2 and len(dense) == 1 and len(summary) == 1
    int8_line = next(m for m in layer if m.startswith("convert: 0 "))
    # name, format, shape, bytes before (fp32 weight + bias) -> after, seconds
    assert "int8" in int8_line and "32x32" in int8_line and f"{4 * (32 * 32 + 32)} ->" in int8_line
    assert int8_line.endswith(" s")
    assert "convert: 1 left dense: pattern '1' maps it to None" in dense[0]
    assert "2 layer(s) converted" in summary[0] and "1 left dense" in summary[0]


def test_info_level_gets_only_the_summary(caplog):
    with caplog.at_level(logging.INFO, logger="compressops"):
        co.convert(_model(), co.Int8(), progress=False)
    recs = [r for r in caplog.records if r.name == "compressops.convert"]
    assert len(recs) == 1 and recs[0].levelno == logging.INFO


def test_nothing_printed_by_default():
    # a fresh process with no logging configured: no record and no bar reaches stderr or stdout
    code = ("import importlib, torch, compressops as co\n"
            "importlib.import_module('compressops.convert').PROGRESS_DELAY_S = 60.0  # no bar on a busy machine\n"
            "m = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))\n"
            "co.convert(m, {'0': co.Int8(), '*': None})\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "compressops.convert" not in out.stderr and "convert:" not in out.stderr and out.stdout == ""
