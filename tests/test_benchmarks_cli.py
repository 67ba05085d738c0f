"""Every benchmark family behind `python -m compressops bench <family>`: found without a list, its command
line parses, and it runs end to end on its smoke shape and writes rows that time compressops and dense fp32.

The real runs take minutes (make bench); `--smoke` runs one tiny shape on 1 thread with 0.01 s of timing,
so a broken implementation, peer, column or output path shows up here instead of in the first full run.
"""

import importlib
import json
import math
import pkgutil
from pathlib import Path

import pytest
import torch

import compressops.__main__ as cli
import compressops.bench
from compressops.bench import runner

FAMILIES = runner.families()


def test_every_declared_family_is_found():
    # A family module that forgot FAMILY or main would silently drop out of the CLI.
    declared = 0
    for info in pkgutil.iter_modules(compressops.bench.__path__):
        module = importlib.import_module(f"compressops.bench.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, runner.Family) and obj.__module__ == module.__name__ \
                    and obj.name:
                assert getattr(module, "FAMILY", None) == obj.name, info.name
                assert FAMILIES[obj.name] is module
                declared += 1
    assert declared == len(FAMILIES) and runner.default_family(FAMILIES) in FAMILIES


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_help_exits_cleanly(family, capsys):
    with pytest.raises(SystemExit) as exc:
        FAMILIES[family].main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--smoke", "--shapes", "--threads", "--min-run-time", "--isa", "--out"):
        assert option in out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cli_reaches_the_family(family, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", family, "--help"])
    assert exc.value.code == 0
    assert f"compressops bench {family}" in capsys.readouterr().out


def test_cli_default_family_and_unknown_family(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert f"compressops bench {runner.default_family(FAMILIES)}" in capsys.readouterr().out
    assert cli.main(["bench", "no-such-family"]) == 2
    assert "unknown benchmark family 'no-such-family'" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2


def test_info_still_runs(capsys):
    assert cli.main(["info"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_smoke_run_writes_rows(family, tmp_path, capsys):
    threads = torch.get_num_threads()
    assert FAMILIES[family].main(["--smoke", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the runner restores what it changed
    out = capsys.readouterr().out
    assert "|---" in out and "smoke run" in out
    written = list(Path(tmp_path).glob("*.json"))
    assert len(written) == 1
    data = json.loads(written[0].read_text())
    assert data["meta"]["family"] == family and data["meta"]["threads"] == [1]
    rows = data["rows"]
    assert rows and all(r["us"] > 0 and math.isfinite(r["us"]) and r["threads"] == 1 for r in rows)
    assert {r["role"] for r in rows} <= set(runner.ROLES)
    assert any(r["role"] == "ours" and r["impl"] for r in rows)
    assert any(r["role"] == "dense" and r["impl"].startswith("fp32") for r in rows)
    # The speedup columns are filled in: dense fp32 over itself is 1.
    for r in rows:
        if r["role"] == "dense" and r["impl"].startswith("fp32"):
            assert any(v == pytest.approx(1.0) for k, v in r.items() if k.startswith(("speedup", "vs_")))
    # Relative errors, where measured, are small: the rows computed the layer they claim to.
    errors = [r["relerr"] for r in rows if r.get("relerr") is not None]
    assert all(0 <= e < 0.5 for e in errors)


def test_models_smoke_rows_compare_int8_with_fp32(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert FAMILIES["models"].main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "models_smoke.json").read_text())["rows"]
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["fp32 eager"]["mean_cos"] == pytest.approx(1.0)
    # int8 changed the output (the converted model ran) but kept it close to fp32
    ours = by_impl["compressops int8 eager"]
    assert 0.99 < ours["mean_cos"] < 1.0 and ours["min_cos"] <= ours["mean_cos"]
    assert ours["speedup_peer"] > 0 and ours["best_peer"] == "torch.ao dynamic int8 (x86)"
    assert "mean cos" in capsys.readouterr().out


def test_models_onnx_export_runs_at_other_shapes():
    # The smoke run leaves the onnxruntime rows out (seconds to export): check that path here, on the
    # tiny model, at a shape other than the one it was exported with (the axes are dynamic).
    pytest.importorskip("onnxruntime")
    pytest.importorskip("transformers")
    from compressops.bench import models

    model = models._tiny_bert()
    onnx, why = models._onnx_models(model, models._inputs(2, 16, None, []))
    assert why is None and set(onnx) == {models.ORT_FP32, models.ORT_INT8}
    enc = models._inputs(3, 24, None, [])
    with torch.inference_mode():
        expected = model(**enc).last_hidden_state
    for label, data in onnx.items():
        y = torch.as_tensor(models._ort_run(models._ort_session(data, 1), enc)())
        assert y.shape == expected.shape
        err = ((y - expected).norm() / expected.norm()).item()
        assert err < (1e-4 if label == models.ORT_FP32 else 0.1), (label, err)
