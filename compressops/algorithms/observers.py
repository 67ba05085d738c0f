"""Activation observers for static quantization, and the calibration pass that feeds them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class AbsMaxObserver:
    """Running max of |x| over every value a layer sees (symmetric min-max observer).

    scale() = absmax / 127, the static int8 activation scale.
    """

    def __init__(self):
        self.absmax = 0.0
        self.batches = 0

    def observe(self, x: torch.Tensor) -> None:
        if x.numel():
            v = float(x.detach().abs().amax())
            if v == v and v != float("inf"):
                self.absmax = max(self.absmax, v)
        self.batches += 1

    def scale(self) -> torch.Tensor:
        if self.batches == 0:
            raise ValueError("observer saw no data: the calibration data never reached this layer")
        return torch.tensor(self.absmax / 127.0 if self.absmax > 0 else 1.0, dtype=torch.float32)

    def result(self) -> torch.Tensor:
        """What convert hands to the layer's handler: the static activation scale."""
        return self.scale()


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def calibrate(model: nn.Module, modules: dict[str, nn.Module], calibration_data,
              observer_factories: dict[str, Callable[[], object]] | None = None) -> dict[str, object]:
    """Run `model` on `calibration_data` and observe the input of each module in `modules`.

    Args:
        model: the float model.
        modules: {name: module} whose inputs to observe.
        calibration_data: a tensor (one batch), a dict of keyword tensors (one batch), or an
            iterable of batches (each a tensor, a tuple of positional args or a dict of kwargs).
        observer_factories: {name: zero-argument factory} for modules that need another observer
            than AbsMaxObserver (anything with observe(x) and result()).
    Returns:
        {name: observer}.
    """
    factories = observer_factories or {}
    observers = {name: factories.get(name, AbsMaxObserver)() for name in modules}
    handles = [
        mod.register_forward_pre_hook(lambda m, args, obs=observers[name]: obs.observe(args[0]))
        for name, mod in modules.items()
    ]
    try:
        if isinstance(calibration_data, (torch.Tensor, dict)):
            _run(model, calibration_data)
        elif isinstance(calibration_data, Iterable):
            for batch in calibration_data:
                _run(model, batch)
        else:
            raise TypeError(f"calibration_data must be a tensor, a dict or an iterable of batches, "
                            f"got {type(calibration_data).__name__}")
    finally:
        for h in handles:
            h.remove()
    return observers
