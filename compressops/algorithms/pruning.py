"""Magnitude pruning that produces the sparse formats, for use in a user's own training loop.

- `magnitude_mask(w, sparsity)`: unstructured (keep the largest |w|).
- `nm_mask(w, n, m)`: N:M along the input dimension (2:4 is `nm_mask(w, 2, 4)`).
- `cubic_sparsity(step, ...)`: the gradual schedule s_t = s_f + (s_i - s_f) (1 - t)^3 (Zhu & Gupta 2017).
- `MagnitudePruner(model, ...)`: holds one mask per pruned layer and keeps the pruned weights at
  zero through optimizer steps (a forward pre-hook re-applies the mask before every forward;
  `apply()` re-applies it explicitly, e.g. right after optimizer.step()). `step()` advances the
  schedule and recomputes the masks (prune -> fine-tune -> prune ...); `remove()` bakes the zeros
  into the weights and removes the hooks, after which compressops.convert with CSR() / Sparse24()
  keeps exactly that pattern.
- `global_magnitude_prune(model, sparsity)`: one threshold over all selected layers, in place.

Example (gradual 2:4 during fine-tuning):

    pruner = MagnitudePruner(model, pattern="2:4")          # or sparsity=0.9, pattern="unstructured"
    for step, batch in enumerate(loader):
        loss = model(batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        pruner.step()                                        # updates masks on its schedule
    pruner.remove()
    model = compressops.convert(model, compressops.Sparse24())
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["magnitude_mask", "nm_mask", "cubic_sparsity", "MagnitudePruner", "global_magnitude_prune",
           "global_threshold"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """bool mask (True = keep) zeroing the `sparsity` fraction of smallest |w| (ties may drop more)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"magnitude_mask: sparsity must be in [0, 1), got {sparsity}")
    w = weight.detach().abs().float()
    drop = int(round(sparsity * w.numel()))
    if drop == 0:
        return torch.ones_like(w, dtype=torch.bool)
    thr = w.flatten().kthvalue(drop).values
    return w > thr


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """bool mask keeping the n largest |w| of every m consecutive weights along the last dim
    (ties: the lower index; a tail shorter than m keeps its n largest)."""
    if not (1 <= n <= m):
        raise ValueError(f"nm_mask: need 1 <= n <= m, got n={n}, m={m}")
    w = weight.detach().abs().float()
    shape = w.shape
    k = shape[-1]
    kp = (k + m - 1) // m * m
    a = torch.full((*shape[:-1], kp), -1.0, device=w.device)  # padding never wins
    a[..., :k] = w
    g = a.view(*shape[:-1], kp // m, m)
    top = torch.sort(g, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
    return keep.view(*shape[:-1], kp)[..., :k].contiguous()


def cubic_sparsity(step: int, final: float, begin: int = 0, end: int = 1000, initial: float = 0.0) -> float:
    """Sparsity at `step` of the cubic schedule from `initial` (at begin) to `final` (at end and after)."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    t = (step - begin) / (end - begin)
    return final + (initial - final) * (1.0 - t) ** 3


def _default_filter(mod: nn.Module, name: str) -> bool:
    return isinstance(mod, nn.Linear)


def _select(model: nn.Module, filter_fn) -> list[tuple[str, nn.Module]]:
    seen, out = set(), []
    for name, mod in model.named_modules():
        if id(mod) in seen or not hasattr(mod, "weight") or not isinstance(getattr(mod, "weight"), torch.Tensor):
            continue
        if (filter_fn or _default_filter)(mod, name):
            seen.add(id(mod))
            out.append((name, mod))
    return out


class MagnitudePruner:
    """Masks for the layers of `model` that keep pruned weights at zero during fine-tuning.

    Args:
        model: the model (its Linear layers by default; see filter_fn).
        sparsity: final unstructured sparsity (pattern="unstructured").
        pattern: "unstructured" or "N:M" (e.g. "2:4"; the fraction is fixed at 1 - N/M, the
            schedule only decides when the mask is first applied and refreshed).
        scope: "layer" (each layer to `sparsity`) or "global" (one threshold over all layers).
        begin: the step at which the cubic schedule starts (the mask is first applied then).
        end: the step at which the schedule reaches `sparsity`.
        every: masks are recomputed every `every` steps between begin and end.
        filter_fn: (module, name) -> bool; default: every nn.Linear.
    """

    def __init__(self, model: nn.Module, sparsity: float = 0.5, pattern: str = "unstructured", scope: str = "layer",
                 begin: int = 0, end: int = 1000, every: int = 100,
                 filter_fn: Callable[[nn.Module, str], bool] | None = None):
        if pattern != "unstructured":
            try:
                n, m = (int(v) for v in pattern.split(":"))
            except ValueError:
                raise ValueError(f"MagnitudePruner: pattern must be 'unstructured' or 'N:M', got {pattern!r}") from None
            self.nm = (n, m)
        else:
            self.nm = None
        if scope not in ("layer", "global"):
            raise ValueError(f"MagnitudePruner: scope must be 'layer' or 'global', got {scope!r}")
        if every < 1 or end < begin:
            raise ValueError("MagnitudePruner: need every >= 1 and end >= begin")
        self.sparsity, self.scope, self.begin, self.end, self.every = sparsity, scope, begin, end, every
        self.layers = _select(model, filter_fn)
        if not self.layers:
            raise ValueError("MagnitudePruner: no layer selected")
        self.masks = {name: torch.ones_like(mod.weight, dtype=torch.bool) for name, mod in self.layers}
        self._hooks = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in self.layers]
        self.step_count = 0
        self.update_masks(self.begin)

    def _hook(self, name):
        def hook(mod, args):
            with torch.no_grad():
                mod.weight.mul_(self.masks[name])

        return hook

    def current_sparsity(self, step: int | None = None) -> float:
        return cubic_sparsity(self.step_count if step is None else step, self.sparsity, self.begin, self.end)

    @torch.no_grad()
    def update_masks(self, step: int | None = None) -> None:
        """Recompute the masks for the schedule at `step` (masks only ever shrink) and apply them."""
        if step is not None and step < self.begin:
            return
        if self.nm is not None:
            for name, mod in self.layers:
                self.masks[name] = nm_mask(mod.weight, *self.nm) & self.masks[name]
        else:
            s = self.current_sparsity(step)
            if self.scope == "global":
                thr = global_threshold([mod.weight for _, mod in self.layers], s)
                for name, mod in self.layers:
                    self.masks[name] = (mod.weight.detach().abs().float() > thr) & self.masks[name]
            else:
                for name, mod in self.layers:
                    self.masks[name] = magnitude_mask(mod.weight, s) & self.masks[name]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights now (e.g. right after optimizer.step())."""
        for name, mod in self.layers:
            mod.weight.mul_(self.masks[name])

    def step(self) -> None:
        """Advance the schedule by one training step; refresh the masks when due."""
        self.step_count += 1
        t = self.step_count
        if self.begin <= t <= self.end and (t - self.begin) % self.every == 0:
            self.update_masks(t)
        else:
            self.apply()

    def remove(self) -> None:
        """Bake the zeros into the weights and remove the hooks."""
        self.apply()
        for h in self._hooks:
            h.remove()
        self._hooks = []


def global_threshold(weights, sparsity: float) -> float:
    """The one magnitude below which the `sparsity` fraction of all `weights` (tensors of any shape)
    lies: weights with |w| > threshold are kept (-1.0 when nothing is dropped)."""
    if sparsity <= 0:
        return -1.0
    allw = torch.cat([w.detach().abs().float().flatten() for w in weights])
    drop = int(round(sparsity * allw.numel()))
    if drop == 0:
        return -1.0
    return float(allw.kthvalue(drop).values)


@torch.no_grad()
def global_magnitude_prune(model: nn.Module, sparsity: float,
                           filter_fn: Callable[[nn.Module, str], bool] | None = None) -> dict[str, float]:
    """Zero the smallest |w| over all selected layers (one threshold), in place.

    Returns the resulting sparsity of each layer. compressops.convert(model, CSR()) then keeps
    exactly these zeros (CSR(sparsity=s, scope="global") does the same inside convert).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"global_magnitude_prune: sparsity must be in [0, 1), got {sparsity}")
    layers = _select(model, filter_fn)
    thr = global_threshold([m.weight for _, m in layers], sparsity)
    out = {}
    for name, mod in layers:
        mod.weight.mul_(mod.weight.abs().float() > thr)
        out[name] = float((mod.weight == 0).float().mean())
    return out
