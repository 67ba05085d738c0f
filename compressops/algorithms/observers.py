"""Activation observers for static quantization, and the calibration pass that feeds them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn


class RowObserver:
    """What every observer shares: it sees a layer's inputs as rows [*, K] and ignores the rows that
    hold NaN/Inf (one bad token must not turn every statistic into NaN), counting them; result()
    warns how many it ignored and raises when no finite row was left."""

    def __init__(self):
        self.rows = 0
        self.dropped = 0

    def finite_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x's rows [M, K] without those holding NaN/Inf (counted in self.dropped)."""
        x2 = x.detach().reshape(-1, x.shape[-1]) if x.dim() else x.detach().reshape(1, 1)
        ok = torch.isfinite(x2).all(dim=1)
        if not bool(ok.all()):
            self.dropped += int((~ok).sum())
            x2 = x2[ok]
        self.rows += x2.shape[0]
        return x2

    def check_rows(self) -> None:
        """Raise when no finite row was seen; warn when some rows were ignored."""
        if self.rows == 0 and self.dropped == 0:
            raise ValueError("observer saw no data: the calibration data never reached this layer")
        if self.rows == 0:
            raise ValueError(f"every one of the {self.dropped} input rows this layer saw in the calibration data "
                             f"held NaN/Inf")
        if self.dropped:
            warnings.warn(f"calibration data: {self.dropped} of {self.dropped + self.rows} input rows held NaN/Inf "
                          f"and were ignored", RuntimeWarning, stacklevel=2)


class AbsMaxObserver(RowObserver):
    """Running max of |x| over every finite row a layer sees (symmetric min-max observer).

    scale() = absmax / 127, the static int8 activation scale (1.0 when every value was zero: any
    scale quantizes zeros exactly).
    """

    def __init__(self):
        super().__init__()
        self.absmax = 0.0

    def observe(self, x: torch.Tensor) -> None:
        x2 = self.finite_rows(x)
        if x2.numel():
            self.absmax = max(self.absmax, float(x2.abs().amax()))

    def scale(self) -> torch.Tensor:
        self.check_rows()
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
        calibration_data (Tensor | dict | Iterable): a tensor (one batch), a dict of keyword tensors (one batch), or an
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
