"""int4 linear benchmark: Int4Linear against dense fp32/bf16 and the int4 peers, in one process.

Rows per shape and thread count (each with its output error against the float64 product with the
original fp32 weights): compressops Int4Linear (g128 asymmetric RTN, fp32 in/out, W4A8 with the
activation quantization included) at the active ISA, fp32 and bf16 nn.Linear, torch's own CPU int4
(aten._weight_int4pack_mm_for_cpu, bf16 activations, the same codes/scales/zero points) and
onnxruntime MatMulNBits (4-bit, block 128, accuracy_level 4, the same codes) when installed, built
directly with onnx.helper. Speed-of-light at M <= 8: int4 weight bytes over the read bandwidth
measured in this run. Cold rows: M=1 rotating over enough layer copies that the weights cannot
stay in the last-level cache.
"""

from __future__ import annotations

import torch

import compressops as co
from compressops.bench import runner
from compressops.bench.linear import COLD_LEGEND, COLUMNS, REL_ERR_LEGEND, Layer, LinearFamily
from compressops.bench.runner import Impl, Run, Table, Target
from compressops.formats import int4 as f4
from compressops.nn import Int4Linear

FAMILY = "int4"
GROUP = 128


def _torch_int4(q: Int4Linear):
    """aten int4pack (bf16 activations) for the same codes: w = (q - 8) * s + (8 - z) * s."""
    codes = f4.unpack_nibbles(q.qweight)[:, :q.in_features].to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    z = q.zeros.float() if q.zeros is not None else torch.full_like(q.scales, 8.0)
    sz = torch.stack([q.scales.t(), ((8 - z) * q.scales).t()], dim=-1).contiguous().bfloat16()
    bias = q.bias.bfloat16() if q.bias is not None else None

    def fn(xb):
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, q.group_size, sz)
        return y + bias if bias is not None else y

    return fn


def _ort_matmulnbits(q: Int4Linear, threads: int):
    """onnxruntime MatMulNBits over the same codes, or (None, reason)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return None, f"onnxruntime rows skipped: {e}"
    n, k, gs = q.out_features, q.in_features, q.group_size
    if k % gs:
        return None, "onnxruntime rows need K to be a multiple of the block size"
    g = k // gs
    codes = f4.unpack_nibbles(q.qweight)[:, :k].view(n, g, gs // 2, 2)
    b = (codes[..., 0] | (codes[..., 1] << 4)).to(torch.uint8).numpy()  # [N, K/gs, gs/2]
    zp = q.zeros.numpy() if q.zeros is not None else np.full((n, g), 8, np.uint8)
    zpk = np.zeros((n, (g + 1) // 2), np.uint8)
    for i in range(g):
        zpk[:, i // 2] |= (zp[:, i] << (4 * (i % 2))).astype(np.uint8)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(q.scales.numpy().reshape(-1), "scales"),
             numpy_helper.from_array(zpk.reshape(-1), "zero_points")]
    nodes = [helper.make_node("MatMulNBits", ["A", "B", "scales", "zero_points"], ["Y"], domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=gs, accuracy_level=4)]
    if q.bias is not None:
        inits.append(numpy_helper.from_array(q.bias.numpy(), "bias"))
        nodes[0].output[0] = "YM"
        nodes.append(helper.make_node("Add", ["YM", "bias"], ["Y"]))
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), None


class Int4Bench(LinearFamily):
    name, title, stem = FAMILY, f"int4 linear (group {GROUP})", "int4_linear"
    has_cold, quick_cold = True, False
    tables = [Table(COLUMNS)]
    legend = ["% SoL (M <= 8): int4 weight bytes / measured read bandwidth (cache-resident when the weight fits in "
              "half the LLC, DRAM otherwise)", COLD_LEGEND, REL_ERR_LEGEND]

    def setup(self, run: Run) -> None:
        self.cfg = co.Int4(group_size=GROUP)
        self.label = f"compressops int4 g{GROUP} ({co.isa()})"

    def impls(self, layer: Layer, run: Run) -> list[Impl]:
        x, xb, exact, wbytes4 = layer.x, layer.xb, layer.exact(), layer.n * layer.k // 2
        q = Int4Linear.from_float(layer.lin, self.cfg)
        tq = _torch_int4(q)
        out = [Impl(self.label, lambda: q(x), "ours", exact, wbytes4), *self.dense(layer),
               Impl("torch int4pack_mm (bf16 act)", lambda: tq(xb), "peer", exact, wbytes4)]
        sess, why = (None, None) if run.skip_slow_peer("onnxruntime rows") else _ort_matmulnbits(q, run.threads)
        if why:
            run.note(why)
        if sess is not None:
            xn = x.numpy()
            out.append(Impl("onnxruntime MatMulNBits (acc. level 4)", lambda: sess.run(None, {"A": xn}), "peer",
                            exact, wbytes4))
        return out

    def cold_builds(self, run: Run):
        return [(self.label, "ours", lambda lin: Int4Linear.from_float(lin, self.cfg), lambda n, k: n * k // 2),
                ("fp32 nn.Linear", "dense", lambda lin: lin, lambda n, k: 4 * n * k)]

    def meta(self, run: Run) -> dict:
        return {"group_size": GROUP}

    def summary(self, rows: list[dict], run: Run) -> None:
        targets = []
        for m, vs_fp32, vs_ort in ((1, 7.5, 1.2), (64, 9.0, 5.0)):
            shape = f"4096x4096 M={m}"
            targets += [Target(f"M={m}", shape, "compressops int4", "fp32", "fp32 nn.Linear", vs_fp32),
                        Target(f"M={m}", shape, "compressops int4", "onnxruntime", "onnxruntime MatMulNBits", vs_ort,
                               optional=True)]
        runner.print_targets(rows, "Issue targets (K=N=4096, group 128, 2 threads; measured, not asserted):", targets)
        slower = [r for r in rows if r["role"] == "ours" and r.get("speedup_bf16") is not None
                  and r["speedup_bf16"] < 1.0]
        print("  never slower than bf16 nn.Linear: " + ("PASS" if not slower else
              "MISS at " + ", ".join(f"{r['shape']} {r['threads']} thr ({r['speedup_bf16']:.2f}x)" for r in slower)))


def main(argv=None) -> int:
    return runner.main(Int4Bench(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
