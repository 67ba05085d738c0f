"""Adapters: float modules of other libraries that compute a linear layer in another layout.

transformers' GPT-2 `Conv1D` (transformers.pytorch_utils.Conv1D) stores its weight as [in, out] and
computes y = x @ W + b: an nn.Linear with the weight transposed. convert, report and load turn such a
module into the equivalent nn.Linear (`as_linear`) before a family sees it, so every family that
converts nn.Linear converts it too and the compressed module replaces it.

Adapters match a class by its module and name, so nothing here imports transformers (a model that
holds a Conv1D has imported it already).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["Adapter", "adapted_reason", "adapter_for", "as_linear", "register_adapter"]


@dataclass(frozen=True)
class Adapter:
    """A float module class (named by `module` and `name`) and how to turn one into an nn.Linear.

    Attributes:
        module: the defining module of the class, e.g. "transformers.pytorch_utils".
        name: the class name, e.g. "Conv1D".
        to_linear: (module) -> an nn.Linear computing the same function (it may hold views of the
            module's tensors: convert only reads it).
    """

    module: str
    name: str
    to_linear: Callable[[nn.Module], nn.Linear]

    def base_of(self, mod: nn.Module) -> type | None:
        """The adapted class in type(mod)'s MRO, or None."""
        return next((t for t in type(mod).__mro__ if t.__module__ == self.module and t.__name__ == self.name), None)


_ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    """Register `adapter` (once per class); returns it.

    Raises:
        ValueError: an adapter for the same class is registered already.
    """
    if any(a.module == adapter.module and a.name == adapter.name for a in _ADAPTERS):
        raise ValueError(f"register_adapter: {adapter.module}.{adapter.name} has an adapter already")
    _ADAPTERS.append(adapter)
    return adapter


def adapter_for(mod: nn.Module) -> Adapter | None:
    """The adapter whose class `mod` is an instance of, or None."""
    return next((a for a in _ADAPTERS if a.base_of(mod) is not None), None)


def adapted_reason(mod: nn.Module) -> str | None:
    """Why an adaptable `mod` stays dense (None: it adapts): a subclass with its own forward may
    compute something else than the linear layer the adapter builds."""
    adapter = adapter_for(mod)
    base = adapter.base_of(mod)
    if type(mod).forward is base.forward or getattr(type(mod), "compressops_convert", False):
        return None
    cls = type(mod).__name__
    return (f"{cls} subclasses {base.__name__} with its own forward, which the compressed module would not run "
            f"(set {cls}.compressops_convert = True if it computes what {base.__name__} does)")


def as_linear(mod: nn.Module) -> nn.Module:
    """The nn.Linear equivalent of an adaptable `mod` (e.g. a GPT-2 Conv1D), or `mod` itself."""
    adapter = adapter_for(mod)
    return mod if adapter is None else adapter.to_linear(mod)


def _conv1d_to_linear(mod: nn.Module) -> nn.Linear:
    # Conv1D: weight [in (nx), out (nf)], bias [out]; y = x @ weight + bias. The Linear holds
    # transposed views of the same tensors (no copy: a model's worth of weights is not duplicated).
    w = mod.weight
    if w.dim() != 2:
        raise ValueError(f"Conv1D: expected a 2-d weight [in, out], got shape {tuple(w.shape)}")
    in_features, out_features = w.shape
    bias = getattr(mod, "bias", None)
    lin = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=w.dtype)
    lin.weight = nn.Parameter(w.detach().t(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return lin


register_adapter(Adapter("transformers.pytorch_utils", "Conv1D", _conv1d_to_linear))
