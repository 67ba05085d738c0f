"""compressops.convert: swap the layers of a trained model for compressed ones."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping

from torch import nn

from .algorithms.observers import calibrate
from .configs import Int8
from .nn import Int8Linear
# [family imports]
from .nn.int4_linear import Int4, Int4Linear
from .nn.sparse_linear import CSR, CSRLinear, Sparse24, Sparse24Linear
from .nn.pq_linear import PQ, PQLinear
from .nn.binary import BinaryConv2d, BinaryLinear  # noqa: E402

# config type -> (module types it converts, function(module, config, name, calibration) -> module);
# calibration is the layer's observer result (see convert) or None
_HANDLERS: dict[type, tuple[tuple[type, ...], Callable]] = {}

REPORT_ATTR = "_compressops_skipped"

# Every compressed module class (convert skips them; save/load recognise them). Each one has
# `from_float(module, config, ...)` and `skeleton(float_module, config)`: an empty module of the
# right shapes that load_state_dict then fills (used by compressops.load).
COMPRESSED_TYPES: tuple[type, ...] = ()
_CANDIDATE_TYPES = (nn.Linear, nn.Conv2d)


def register_handler(config_type: type, module_types: tuple[type, ...], compressed_types: tuple[type, ...] = ()):
    """Decorator: register how `config_type` converts modules of `module_types` into `compressed_types`."""

    def wrap(fn):
        global COMPRESSED_TYPES
        _HANDLERS[config_type] = (module_types, fn)
        COMPRESSED_TYPES = COMPRESSED_TYPES + tuple(t for t in compressed_types if t not in COMPRESSED_TYPES)
        return fn

    return wrap


@register_handler(Int8, (nn.Linear,), (Int8Linear,))
def _convert_int8(mod, config, name, act_scale=None):
    return Int8Linear.from_float(mod, config, act_scale=act_scale, name=name)


# [int4 handler]
@register_handler(Int4, (nn.Linear,), (Int4Linear,))
def _convert_int4(mod, config, name, calibration=None):
    return Int4Linear.from_float(mod, config, hessian=calibration, name=name)

# [sparse handlers]
@register_handler(Sparse24, (nn.Linear,), (Sparse24Linear,))
def _convert_sparse24(mod, config, name, calibration=None):
    return Sparse24Linear.from_float(mod, config, name=name)


@register_handler(CSR, (nn.Linear,), (CSRLinear,))
def _convert_csr(mod, config, name, calibration=None, prepared=None):
    mask = None
    if prepared is not None:  # CSR(scope="global"): the threshold CSR.prepare set over every layer
        mask = (mod.weight.detach().abs().float() > prepared) & (mod.weight.detach() != 0)
    return CSRLinear.from_float(mod, config, name=name, mask=mask)


# [pq handler]
@register_handler(PQ, (nn.Linear,), (PQLinear,))
def _convert_pq(mod, config, name, calibration=None):
    return PQLinear.from_float(mod, config, calibration=calibration, name=name)


# [binary handler]
from .configs import Binary  # noqa: E402


@register_handler(Binary, (nn.Conv2d, nn.Linear), (BinaryConv2d, BinaryLinear))
def _convert_binary(mod, config, name, calibration=None):
    if isinstance(mod, nn.Conv2d):
        return BinaryConv2d.from_float(mod, config, name=name)
    return BinaryLinear.from_float(mod, config, name=name)


def compressed_types() -> tuple[type, ...]:
    """Every registered compressed module class (the tuple grows as families register)."""
    return COMPRESSED_TYPES


def _config_for(name: str, config):
    """(config or None, reason when None) for the module called `name`."""
    if not isinstance(config, Mapping):
        return config, None
    for pattern, cfg in config.items():
        if fnmatch.fnmatchcase(name, pattern):
            return cfg, None if cfg is not None else f"pattern {pattern!r} maps it to None (left dense)"
    return None, "no pattern matched"


def convert(model: nn.Module, config, *, calibration_data=None, inplace: bool = True,
            filter_fn: Callable[[nn.Module, str], bool] | None = None, progress: bool | None = None) -> nn.Module:
    """Replace the supported layers of `model` with compressed modules.

    Args:
        model: a trained float model.
        config: one config (e.g. compressops.Int8()) for every supported layer, or a mapping
            {fnmatch pattern on module names: config or None}; the first matching pattern wins,
            None leaves the layer dense, and unmatched layers stay dense.
        calibration_data: batches to run through the model when a config needs activation
            statistics (Int8(act="static")): a tensor, a dict of kwargs, or an iterable of batches.
        inplace: modify `model` (default) or convert a deep copy.
        filter_fn: optional extra predicate (module, name) -> bool; False leaves a layer dense.
            A config may add its own over the whole model (Binary(keep_first_last=True)).
        progress: show a progress bar (default: when converting more than 50 layers).
    Returns:
        The converted model. Layers left dense and why are listed by compressops.report(model).
    Raises:
        ValueError: a layer cannot be converted (e.g. NaN weights; the message names it), or
            static quantization without calibration_data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    skipped: dict[str, str] = dict(getattr(model, REPORT_ATTR, {}))
    plan = []
    model_filters: dict[int, Callable | None] = {}
    # remove_duplicate=False: a layer reachable under two names (tied weights) must be swapped
    # under both; it is still converted once (see `converted` below).
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, COMPRESSED_TYPES) or not isinstance(mod, _CANDIDATE_TYPES):
            continue
        cfg, reason = _config_for(name, config)
        if cfg is None:
            skipped[name] = reason
            continue
        handler = _HANDLERS.get(type(cfg))
        if handler is None:
            raise TypeError(f"convert: {type(cfg).__name__} is not a compressops config")
        module_types, fn = handler
        if not isinstance(mod, module_types):
            skipped[name] = f"{type(cfg).__name__} does not support {type(mod).__name__}"
            continue
        # A config may reject some settings of a module type it handles (e.g. grouped convs).
        unsupported = cfg.unsupported_reason(mod) if hasattr(cfg, "unsupported_reason") else None
        if unsupported:
            skipped[name] = unsupported
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            skipped[name] = "filter_fn returned False"
            continue
        model_filter = _model_filter(cfg, model, model_filters)
        if model_filter is not None and not model_filter(mod, name):
            skipped[name] = getattr(cfg, "model_filter_reason", f"{type(cfg).__name__}.model_filter left it dense")
            continue
        skipped.pop(name, None)
        plan.append((name, mod, cfg, fn))

    # Calibration: a config with needs_calibration=True requires calibration_data; one with
    # uses_calibration=True uses it when given. The observer comes from cfg.make_observer() when the
    # config has one (default: AbsMaxObserver), and its result() reaches the handler as `calibration`.
    calibration = {}
    needs_cal = {name: mod for name, mod, cfg, _ in plan if getattr(cfg, "needs_calibration", False)}
    uses_cal = {name: (mod, cfg) for name, mod, cfg, _ in plan
                if getattr(cfg, "needs_calibration", False) or getattr(cfg, "uses_calibration", False)}
    if needs_cal and calibration_data is None:
        first = next(iter(needs_cal))
        raise ValueError(f"convert: {len(needs_cal)} layer(s) need calibration_data "
                         f"(e.g. {first!r}, {type(_plan_cfg(plan, first)).__name__})")
    if uses_cal and calibration_data is not None:
        factories = {name: cfg.make_observer for name, (_, cfg) in uses_cal.items() if hasattr(cfg, "make_observer")}
        observers = calibrate(model, {n: m for n, (m, _) in uses_cal.items()}, calibration_data, factories)
        for name, obs in observers.items():
            try:
                calibration[name] = obs.result()
            except ValueError as e:
                raise ValueError(f"convert: layer {name!r}: {e}") from None

    show = progress if progress is not None else len(plan) > 50
    iterator = plan
    if show:
        try:
            from tqdm import tqdm

            iterator = tqdm(plan, desc="compressops.convert", unit="layer")
        except ImportError:
            pass
    # Whole-plan preparation: a config with prepare(layers) sees every (name, module) it is about to
    # convert at once (e.g. CSR(scope="global") sets one threshold over all of them); the value it
    # returns for a layer reaches that layer's handler as `prepared`.
    prepared: dict[str, object] = {}
    for cfg in _distinct(cfg for _, _, cfg, _ in plan):
        if hasattr(cfg, "prepare"):
            prepared.update(cfg.prepare([(n, m) for n, m, c, _ in plan if c == cfg]))
    converted: dict[int, nn.Module] = {}  # a module reachable under two names is converted once
    for name, mod, cfg, fn in iterator:
        new = converted.get(id(mod))
        if new is None:
            extra = {"prepared": prepared[name]} if name in prepared else {}
            new = fn(mod, cfg, name, calibration.get(name), **extra)
            converted[id(mod)] = new
        _set_submodule(model, name, new)
    setattr(model, REPORT_ATTR, skipped)
    return model


def _model_filter(cfg, model, cache):
    """cfg.model_filter(model) (a config's own (module, name) -> bool over the whole model), once per config."""
    if id(cfg) not in cache:
        cache[id(cfg)] = cfg.model_filter(model) if hasattr(cfg, "model_filter") else None
    return cache[id(cfg)]


def _distinct(configs):
    out = []
    for cfg in configs:
        if not any(cfg == o for o in out):
            out.append(cfg)
    return out


def _plan_cfg(plan, name):
    return next(cfg for n, _, cfg, _ in plan if n == name)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ValueError("convert: the model itself is a single layer; convert it with "
                         "compressops.nn.<Module>.from_float instead")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
