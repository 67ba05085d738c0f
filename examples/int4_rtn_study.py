"""Why int4 round-to-nearest at group size 128 stays under 0.97 mean cosine on MiniLM-L6.

Issue 3 asks for a mean sentence-embedding cosine of at least 0.97 against fp32 with every Linear
layer of all-MiniLM-L6-v2 in int4 g128, quantized by round-to-nearest (RTN). `make demo` prints
0.958 for compressops' RTN. This study separates the causes and tries the usual ways of choosing
RTN's per-group scale and zero point, on the demo's 72 evaluation sentences:

  * the shipped RTN through the W4A8 kernels, and the same weights with fp32 activations (so the
    int8 activation step of the kernels is measured apart from the weight rounding);
  * RTN without the clip search (plain min/max range);
  * RTN with a least-squares refit of each group's scale to its rounded codes;
  * RTN with the range's two ends shrunk independently (a 2-D clip grid);
  * RTN whose clip search weighs each column by the calibration activations' mean square (the
    data-aware clipping of AWQ-style methods; uses the demo's calibration sentences);
  * group sizes 64 and 32, and GPTQ at g128, for scale.

Every variant but the two through compressops' modules replaces each Linear's weight by its
dequantized int4 weight (fp32 activations). Run from the repository root (about 2 minutes):

    .venv/bin/python examples/int4_rtn_study.py
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm_demo as demo  # noqa: E402

import compressops as co  # noqa: E402
from compressops.formats import int4 as f4  # noqa: E402

GROUP = 128


def grouped(w: torch.Tensor, gs: int) -> torch.Tensor:
    n, k = w.shape
    kp = f4.padded_k(k, gs)
    wp = torch.zeros(n, kp)
    wp[:, :k] = w
    return wp.view(n, kp // gs, gs)


def dequant(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, k: int) -> torch.Tensor:
    q = f4.quantize_values(wg, s, z)
    return ((q - z[..., None]) * s[..., None]).reshape(wg.shape[0], -1)[:, :k]


def rtn(w, gs=GROUP, clip=True, importance=None):
    wg = grouped(w, gs)
    imp = None if importance is None else torch.nn.functional.pad(importance, (0, wg.shape[1] * gs - w.shape[1]))
    s, z = f4.group_params(wg, False, clip_search=clip, importance=None if imp is None else imp.view(-1, gs))
    return dequant(wg, s, z, w.shape[1])


def rtn_lsq(w, iters=5):
    """Shipped RTN, then per group s <- argmin ||(q - z) s - w||^2 for the current codes (kept if better)."""
    wg = grouped(w, GROUP)
    s, z = f4.group_params(wg, False)
    for _ in range(iters):
        c = f4.quantize_values(wg, s, z) - z[..., None]
        s_new = (wg * c).sum(-1) / (c * c).sum(-1).clamp_min(1e-12)
        err = lambda sc: (((f4.quantize_values(wg, sc, z) - z[..., None]) * sc[..., None] - wg) ** 2).sum(-1)  # noqa: E731
        s = torch.where(err(s_new) < err(s), s_new, s)
    return dequant(wg, s, z, w.shape[1])


def rtn_2d(w, grid=12):
    """Range [p_lo * min, p_hi * max] with p_lo, p_hi searched independently (1 down to 0.5)."""
    wg = grouped(w, GROUP)
    lo0, hi0 = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    best = None
    for i in range(grid):
        for j in range(grid):
            lo, hi = lo0 * (1 - 0.5 * i / grid), hi0 * (1 - 0.5 * j / grid)
            s = ((hi - lo) / 15).clamp_min(1e-12)
            z = torch.round(-lo / s).clamp(0, 15)
            e = (((f4.quantize_values(wg, s, z) - z[..., None]) * s[..., None] - wg) ** 2).sum(-1)
            if best is None:
                best = [e, s, z]
            else:
                better = e < best[0]
                best = [torch.where(better, e, best[0]), torch.where(better, s, best[1]), torch.where(better, z, best[2])]
    return dequant(wg, best[1], best[2], w.shape[1])


def input_mean_squares(model, batches) -> dict[str, torch.Tensor]:
    """Per Linear layer: the mean over calibration tokens of x_k^2 for each input column k."""
    sums, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(m, inp, out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                s, c = sums.get(name, (0.0, 0))
                sums[name] = (s + (x * x).sum(0), c + x.shape[0])
            hooks.append(mod.register_forward_hook(hook))
    with torch.inference_mode():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    return {name: (s / c).float() for name, (s, c) in sums.items()}


def with_weights(model, fn):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(fn(name, mod.weight.detach().float()))
    return m


def main() -> int:
    torch.manual_seed(0)
    model, tok = demo.load_model(demo.model_dir())
    batches = [tok(demo.SENTENCES[i:i + demo.EMBED_BATCH], padding=True, truncation=True,
                   max_length=demo.EMBED_MAX_LEN, return_tensors="pt")
               for i in range(0, len(demo.SENTENCES), demo.EMBED_BATCH)]
    calib = [dict(tok(demo.CALIBRATION_SENTENCES[i:i + 8], padding=True, truncation=True,
                      max_length=demo.EMBED_MAX_LEN, return_tensors="pt"))
             for i in range(0, len(demo.CALIBRATION_SENTENCES), 8)]
    ref = demo.embed(model, batches)
    ms = input_mean_squares(model, calib)

    variants = [
        ("RTN g128, shipped (W4A8 kernels)", lambda: co.convert(copy.deepcopy(model), co.Int4(group_size=GROUP))),
        ("RTN g128, shipped, fp32 activations", lambda: with_weights(model, lambda n, w: rtn(w))),
        ("RTN g128, no clip search (min/max)", lambda: with_weights(model, lambda n, w: rtn(w, clip=False))),
        ("RTN g128 + least-squares scale refit", lambda: with_weights(model, lambda n, w: rtn_lsq(w))),
        ("RTN g128, 2-D clip grid", lambda: with_weights(model, lambda n, w: rtn_2d(w))),
        ("RTN g128, clip weighted by calibration x^2", lambda: with_weights(model, lambda n, w: rtn(w, importance=ms[n]))),
        ("RTN g64 (shipped rule)", lambda: with_weights(model, lambda n, w: rtn(w, gs=64))),
        ("RTN g32 (shipped rule)", lambda: with_weights(model, lambda n, w: rtn(w, gs=32))),
        ("GPTQ g128 (W4A8 kernels)", lambda: co.convert(copy.deepcopy(model), co.Int4(group_size=GROUP, method="gptq"),
                                                        calibration_data=calib)),
    ]
    print(f"{'variant':<46} {'mean cos':>9} {'min cos':>8} {'seconds':>8}")
    for label, build in variants:
        t0 = time.perf_counter()
        m = build().eval()
        cos = (demo.embed(m, batches) * ref).sum(1)
        print(f"{label:<46} {cos.mean().item():>9.4f} {cos.min().item():>8.4f} {time.perf_counter() - t0:>8.1f}",
              flush=True)
    print("\nTarget (issue 3): mean cos >= 0.97 with RTN at g128.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
