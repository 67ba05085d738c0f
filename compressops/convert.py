"""compressops.convert: swap the layers of a trained model for compressed ones.

convert knows no format: it talks to each config through the Config protocol
(compressops.configs), whose hooks reach the family the config's module file registered.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .adapters import adapted_reason, adapter_for, as_linear
from .algorithms.observers import calibrate
from .configs import Config, compressed_types, families, family_of, model_passes
from .hf_record import record as record_hf
from .nn.compressed_linear import on_meta
from .speedcheck import BUSY_LOAD, SPEED_ATTR, LayerTimer, check_example_inputs

REPORT_ATTR = "_compressops_skipped"

# Per-layer records at DEBUG, one summary at INFO; both below the WARNING level at which Python's
# last-resort handler prints, so an application that configures no logging sees nothing.
_log = logging.getLogger("compressops.convert")
# progress=None: the bar appears only once a conversion (or its calibration pass) has run this long
PROGRESS_DELAY_S = 2.0

# Parents whose forward reads these children's .weight/.bias directly instead of calling them, so a
# compressed child would break them (nn.MultiheadAttention passes out_proj.weight to a functional).
_READS_CHILD_WEIGHTS: dict[type, tuple[str, ...]] = {nn.MultiheadAttention: ("out_proj",)}


def _slow_path_encoder_layer(layer: nn.TransformerEncoderLayer) -> None:
    # Its inference fast path hands linear1/linear2.weight to one fused kernel; this attribute only
    # gates that path (the regular path calls layer.activation), so 0 keeps the layer on the path
    # that calls its (now compressed) children.
    layer.activation_relu_or_gelu = 0


def _slow_path_encoder(encoder: nn.TransformerEncoder) -> None:
    encoder.use_nested_tensor = False  # the nested-tensor path needs every layer's fast path


# Ancestors with an inference fast path that bypasses their children's forward: what turns it off
# once a descendant is compressed.
_FAST_PATH_OFF: dict[type, Callable[[nn.Module], None]] = {
    nn.TransformerEncoderLayer: _slow_path_encoder_layer,
    nn.TransformerEncoder: _slow_path_encoder,
}


def candidate_types() -> tuple[type, ...]:
    """Every float module type some registered family converts (the layers convert and report consider)."""
    out: list[type] = []
    for fam in families():
        out += [t for t in fam.converts if t not in out]
    return tuple(out)


def _subclass_reason(mod: nn.Module, candidates: tuple[type, ...]) -> str | None:
    """Why a subclass of a convertible type stays dense (None: it converts).

    A subclass converts when it computes what its base computes (it does not override forward) or
    when it opts in with a class attribute `compressops_convert = True`; any other subclass may
    compute something else (2 * linear(x) + 1), which a compressed base module would silently drop.
    """
    cls = type(mod)
    if cls in candidates or getattr(cls, "compressops_convert", False):
        return None
    base = next(t for t in candidates if isinstance(mod, t))
    if cls.forward is base.forward:
        return None
    return (f"{cls.__name__} subclasses {base.__name__} with its own forward, which the compressed module "
            f"would not run (set {cls.__name__}.compressops_convert = True if it computes what "
            f"{base.__name__} does)")


def _parent_reason(model: nn.Module, name: str) -> str | None:
    """Why the module `name` stays dense because its parent reads its weight directly (None: it converts)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    for parent_type, children in _READS_CHILD_WEIGHTS.items():
        if isinstance(parent, parent_type) and child in children:
            return (f"its parent {type(parent).__name__} reads {child}.weight directly, which a compressed "
                    f"module does not have")
    return None


def _config_for(name: str, config):
    """(config or None, reason when None) for the module called `name`."""
    if not isinstance(config, Mapping):
        return config, None
    for pattern, cfg in config.items():
        if fnmatch.fnmatchcase(name, pattern):
            return cfg, None if cfg is not None else f"pattern {pattern!r} maps it to None (left dense)"
    return None, "no pattern matched"


def convert(model: nn.Module, config, *, calibration_data=None, inplace: bool = True,
            filter_fn: Callable[[nn.Module, str], bool] | None = None, progress: bool | None = None,
            only_if_faster: bool = False, example_inputs=None) -> nn.Module:
    """Replace the supported layers of `model` with compressed modules.

    Args:
        model: a trained float model.
        config (Config | Mapping[str, Config | None]): one config (an instance of a compressops.configs
            class) for every supported layer, or a mapping {fnmatch pattern on module names: config or
            None}; the first matching pattern wins, None leaves the layer dense, and unmatched layers
            stay dense.
        calibration_data (Tensor | dict | Iterable | None): batches to run through the model when a
            config needs activation statistics (config.needs_calibration), or can use them (config.uses_calibration):
            a tensor, a dict of kwargs, or an iterable of batches.
        inplace: modify `model` (default) or convert a deep copy.
        filter_fn: optional extra predicate (module, name) -> bool; False leaves a layer dense.
            A config may add its own over the whole model (config.model_filter).
        progress: None (default): a progress bar (tqdm, on stderr) over the calibration batches and
            the layers (their conversion and, with only_if_faster, their timing) that appears only
            when that work takes more than PROGRESS_DELAY_S (2 s); True: shown from the start; False: never.
        only_if_faster: keep a layer compressed only where it is faster than the dense layer on this
            machine: after calibration, the model runs once on `example_inputs` to record each
            candidate layer's input, and each converted layer is timed against its dense original on
            that input (interleaved calls, medians, about compressops.speedcheck.LAYER_BUDGET_S =
            50 ms a layer); where the speedup is below 1 + speedcheck.NOISE_MARGIN (1.03x), or the
            layer never ran, the dense layer stays. report(model) shows every timed layer's speedup
            and, for those kept dense, why ("slower than dense at [8, 128, 384]: 0.93x"). Timings
            taken while other processes keep the CPU busy decide by noise: convert warns then.
        example_inputs (Tensor | tuple | dict | None): with only_if_faster, one batch as the model
            takes it: a tensor, a tuple of positional args or a dict of keyword args (e.g. a
            tokenizer's output at the batch and sequence length you will run).
    Returns:
        The converted model. Layers left dense and why are listed by compressops.report(model).
        The registered model passes then run over it (configs.register_model_pass): e.g. the
        query/key/value projections of a BERT-style self-attention become one GEMM (nn.fused_qkv).
        A transformers model also gets config.quantization_config (compressops.hf_record), so
        model.save_pretrained(d) and AutoModel.from_pretrained(d) round-trip it.

    Logging (logger "compressops.convert", a child of "compressops"): one DEBUG record per converted
    layer (name, format, shape, bytes before and after, seconds) and per layer left dense (name,
    reason), and one INFO summary; `logging.getLogger("compressops").setLevel(logging.DEBUG)` with
    a handler shows them.
    Raises:
        TypeError: model is not an nn.Module, a config is not a registered compressops config, or
            example_inputs is not a tensor, tuple or dict.
        ValueError: a layer cannot be converted (e.g. NaN weights; the message names it), a
            config that needs calibration without calibration_data, only_if_faster without
            example_inputs (or example_inputs without only_if_faster), or only_if_faster with a
            layer on the meta device (it cannot run).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    check_example_inputs(example_inputs, only_if_faster)
    if not inplace:
        model = copy.deepcopy(model)
    skipped: dict[str, str] = dict(getattr(model, REPORT_ATTR, {}))
    speeds = dict(getattr(model, SPEED_ATTR, {}))  # only_if_faster's timings, by layer name
    compressed, candidates = compressed_types(), candidate_types()
    plan: list[tuple[str, nn.Module, Config]] = []
    model_filters: dict[int, Callable | None] = {}
    # A module of another library that computes a linear layer in another layout (GPT-2's Conv1D) is
    # seen by the configs as its nn.Linear equivalent (compressops.adapters); calibration still
    # observes the module itself (its inputs are the same).
    originals: dict[int, nn.Module] = {}  # id(adapted Linear) -> the module it stands for
    adapted: dict[int, nn.Module] = {}  # id(module) -> its adapted Linear (one per module, however many names)
    # remove_duplicate=False: a layer reachable under two names (tied weights) must be swapped
    # under both; it is still converted once (see `converted` below).
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, compressed) or not (isinstance(mod, candidates) or adapter_for(mod) is not None):
            continue
        cfg, reason = _config_for(name, config)
        if cfg is None:
            skipped[name] = reason
            continue
        if not isinstance(cfg, Config):
            raise TypeError(f"convert: {type(cfg).__name__} is not a compressops config")
        if adapter_for(mod) is not None:
            reason = adapted_reason(mod)
            if reason:
                skipped[name] = reason
                continue
            if id(mod) not in adapted:
                adapted[id(mod)] = as_linear(mod)
                originals[id(adapted[id(mod)])] = mod
            mod = adapted[id(mod)]
        if not cfg.accepts(mod):
            skipped[name] = f"{type(cfg).__name__} does not support {type(mod).__name__}"
            continue
        structural = _subclass_reason(mod, candidates) or (_parent_reason(model, name) if name else None)
        if structural:
            skipped[name] = structural
            continue
        # A config may reject some settings of a module type it handles (e.g. grouped convs).
        unsupported = cfg.unsupported_reason(mod)
        if unsupported:
            skipped[name] = unsupported
            continue
        if filter_fn is not None and not filter_fn(originals.get(id(mod), mod), name):
            skipped[name] = "filter_fn returned False"
            continue
        if id(cfg) not in model_filters:
            model_filters[id(cfg)] = cfg.model_filter(model)
        model_filter = model_filters[id(cfg)]
        if model_filter is not None and not model_filter(originals.get(id(mod), mod), name):
            skipped[name] = cfg.model_filter_reason
            continue
        skipped.pop(name, None)
        plan.append((name, mod, cfg))

    plan, tie_groups = _split_tied(model, plan, skipped, originals)
    started = time.perf_counter()
    observed = [(n, originals.get(id(m), m), c) for n, m, c in plan + [e for group in tie_groups for e in group]]
    for name, _, _ in observed:
        speeds.pop(name, None)  # a layer converted again loses its earlier timing
    calibration = _calibrate(model, observed, calibration_data, progress)
    timer = _layer_timer(model, observed, example_inputs) if only_if_faster else None
    tied = []
    for group in tie_groups:
        done = _convert_tied(group, calibration, skipped)
        tied += done if timer is None else _faster_tied(model, done, timer, skipped)
    for name, reason in skipped.items():
        _log.debug("convert: %s left dense: %s", name, reason)

    iterator = _progress_bar(plan, progress, "compressops.convert", "layer")
    # Whole-plan preparation: each config sees every (name, module) it is about to convert at once
    # (e.g. one magnitude threshold over all of them); its value for a layer reaches convert_module.
    prepared: dict[str, object] = {}
    for cfg in _distinct(cfg for _, _, cfg in plan):
        prepared.update(cfg.prepare([(n, m) for n, m, c in plan if c == cfg]))
    converted: dict[int, nn.Module] = {}  # a module reachable under two names is converted once
    kept_dense: dict[int, str] = {}  # id(module) -> why only_if_faster kept it dense
    before = after = 0
    try:
        for name, mod, cfg in iterator:
            if id(mod) not in converted and id(mod) not in kept_dense:
                t0 = time.perf_counter()
                new = cfg.convert_module(mod, name, calibration.get(name), prepared.get(name))
                reason = None if timer is None else timer.verdict(name, originals.get(id(mod), mod), new)
                if reason is not None:
                    kept_dense[id(mod)] = reason
                    _log.debug("convert: %s left dense: %s", name, reason)
                else:
                    converted[id(mod)] = new
                    b0, b1 = _float_bytes(mod), _stored_bytes(new)
                    before, after = before + b0, after + b1
                    if _log.isEnabledFor(logging.DEBUG):
                        _log.debug("convert: %s %s -> %s, %s, %d -> %d bytes, %.3f s", name, type(mod).__name__,
                                   getattr(new, "format_label", type(new).__name__),
                                   "x".join(map(str, mod.weight.shape)) if hasattr(mod, "weight") else "?",
                                   b0, b1, time.perf_counter() - t0)
            elif timer is not None:  # the same module under another name: its timing, recorded under this name too
                timer.verdict(name, originals.get(id(mod), mod), None)
            if id(mod) in kept_dense:
                skipped[name] = kept_dense[id(mod)]
                continue
            _set_submodule(model, name, converted[id(mod)])
            _turn_off_fast_paths(model, name)
    finally:
        if iterator is not plan:
            iterator.close()
    for name, new in tied:
        _set_submodule(model, name, new)
        _turn_off_fast_paths(model, name)
    for model_pass in model_passes():  # rewrites across converted layers that change no result (fused Q/K/V)
        model_pass(model)
    setattr(model, REPORT_ATTR, skipped)
    if timer is not None:
        speeds.update(timer.records)
        load = timer.other_load
        if load is not None and load > BUSY_LOAD:
            warnings.warn(f"convert(only_if_faster=True): other processes kept {load:.1f} core(s) busy on average "
                          f"while the layers were timed, so which layers stayed dense may reflect that load more "
                          f"than the layers; convert again on a quiet machine", RuntimeWarning, stacklevel=2)
    setattr(model, SPEED_ATTR, speeds)
    # A transformers model records its compressed layers in config.quantization_config, so that
    # save_pretrained writes them to config.json and from_pretrained rebuilds them (compressops.hf).
    record_hf(model, config)
    for name, new in tied:
        _log.debug("convert: %s -> %s (tied)", name, getattr(new, "format_label", type(new).__name__))
    _log.info("convert: %d layer(s) converted (%d -> %d bytes), %d tied, %d left dense, %.2f s", len(converted),
              before, after, len(tied), len(skipped), time.perf_counter() - started)
    return model


def _layer_timer(model: nn.Module, observed, example_inputs) -> LayerTimer:
    """only_if_faster's timer over the planned layers (the model's own modules), their inputs
    captured from one run of the float model on example_inputs."""
    on_meta_layers = [name for name, mod, _ in observed if on_meta(mod)]
    if on_meta_layers:
        raise ValueError(f"convert: only_if_faster=True cannot time layers on the meta device (they hold no "
                         f"values), e.g. {on_meta_layers[0]!r}")
    return LayerTimer(model, [mod for _, mod, _ in observed], example_inputs)


def _faster_tied(model: nn.Module, done: list[tuple[str, nn.Module]], timer: LayerTimer,
                 skipped: dict[str, str]) -> list[tuple[str, nn.Module]]:
    """`done` (one tied group's [(name, compressed module)]) when every member is faster than its
    dense module; [] otherwise, every member then dense with the reason in `skipped` (a member alone
    cannot convert: it would store the shared tensor twice)."""
    reasons = {name: timer.verdict(name, model.get_submodule(name), new) for name, new in done}
    slow = [(name, r) for name, r in reasons.items() if r is not None]
    if not slow:
        return done
    for name, _ in done:
        skipped[name] = reasons[name] or f"tied to {slow[0][0]!r}, which stays dense: {slow[0][1]}"
    return []


def _split_tied(model: nn.Module, plan, skipped: dict[str, str], originals: Mapping[int, nn.Module]):
    """(plan without tied modules, [plan entries of one group of tied modules, ...]).

    Modules holding a common parameter (GPT-2's lm_head.weight is transformer.wte.weight) convert
    together, through their family's tie hook, into compressed modules that share one copy; or not
    at all. A group with a member that stays dense leaves the others dense too, with the reason in
    `skipped`: converting one alone would store the shared tensor twice (the model would grow).
    `originals` maps id(adapted Linear) to the model's own module it stands for (a GPT-2 Conv1D).
    """
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}  # id(parameter) -> (module name, module, name)
    for name, mod in model.named_modules():
        for pname, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((name, mod, pname))
    group_of: dict[int, set[int]] = {}  # id(module) -> ids of every module it shares a parameter with
    shared: dict[int, list[str]] = {}  # id(module) -> "weight is lm_head.weight" lines
    for members in holders.values():
        if len({id(m) for _, m, _ in members}) < 2:
            continue
        ids = set().union(*(group_of.get(id(m), {id(m)}) for _, m, _ in members))
        for i in ids:
            group_of[i] = ids
        for name, mod, pname in members:
            shared.setdefault(id(mod), []).extend(f"{pname} is {n}.{p}" if n else f"{pname} is {p}"
                                                  for n, m, p in members if m is not mod)
    if not group_of:
        return plan, []
    names = {id(m): n for n, m in model.named_modules()}
    planned = {id(originals.get(id(mod), mod)) for _, mod, _ in plan}
    groups: dict[int, list] = {}
    rest = []
    for entry in plan:
        name, mod, _ = entry
        mod = originals.get(id(mod), mod)
        ids = group_of.get(id(mod))
        if ids is None:
            rest.append(entry)
            continue
        dense = [names[i] for i in ids if i not in planned]
        if dense:
            skipped[name] = (f"tied ({'; '.join(shared[id(mod)])}) to {', '.join(map(repr, dense))}, which stays "
                             f"dense: converting it alone would store the shared tensor twice")
        else:
            groups.setdefault(id(ids), []).append(entry)
    return rest, list(groups.values())


def _convert_tied(group, calibration, skipped: dict[str, str]) -> list[tuple[str, nn.Module]]:
    """[(name, compressed module)] for one group of tied modules (plan entries, every member
    planned), converted through their family's tie hook to share one copy; [] when they cannot,
    with the reason in `skipped` for each."""
    first = {}
    for name, mod, cfg in group:
        first.setdefault(id(mod), (name, mod, cfg))
    members = list(first.values())
    fams = list({id(f): f for f in (family_of(cfg) for _, _, cfg in members)}.values())
    label = " and ".join(repr(n) for n, _, _ in members)
    if len(fams) != 1:
        result = "they are given different formats, which cannot share one copy"
    elif fams[0].tie is None:
        result = f"{fams[0].config.__name__} has no way to share one compressed copy between them"
    else:
        result = fams[0].tie([(n, m, cfg, calibration.get(n)) for n, m, cfg in members])
    if isinstance(result, str):
        for name, _, _ in group:
            skipped[name] = f"tied ({label} share a weight): {result}; left dense, not stored twice"
        return []
    for name, _, _ in group:
        skipped.pop(name, None)
    return [(name, result[first[id(mod)][0]]) for name, mod, _ in group]


def _progress_bar(items, progress: bool | None, desc: str, unit: str):
    """items wrapped in a tqdm bar per the `progress` rule of convert (items itself when no bar)."""
    if progress is False:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop a conversion
        return items
    return tqdm(items, desc=desc, unit=unit, delay=0.0 if progress else PROGRESS_DELAY_S)


def _float_bytes(mod: nn.Module) -> int:
    """Bytes of a float module's own parameters and buffers (what its conversion replaces)."""
    tensors = [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _stored_bytes(mod: nn.Module) -> int:
    """Bytes of a converted module's stored format (its compressed_bytes(), else its state_dict)."""
    if hasattr(mod, "compressed_bytes"):
        return int(mod.compressed_bytes())
    return sum(t.numel() * t.element_size() for t in mod.state_dict().values())


def _turn_off_fast_paths(model: nn.Module, name: str) -> None:
    """Keep the ancestors of the converted module `name` off fast paths that would skip its forward."""
    parts = name.split(".")
    for depth in range(len(parts)):
        ancestor = model.get_submodule(".".join(parts[:depth]))
        for fast_type, turn_off in _FAST_PATH_OFF.items():
            if isinstance(ancestor, fast_type):
                turn_off(ancestor)


def _calibrate(model: nn.Module, plan, calibration_data, progress: bool | None = None) -> dict[str, object]:
    """{name: observer result} for the planned layers whose config uses calibration data.

    A config with needs_calibration requires calibration_data; one with uses_calibration uses it
    when given. Each layer's observer comes from cfg.make_observer(). Layers on the meta device
    take none: they hold no values, and become skeletons (the family's from_float).
    """
    plan = [(name, mod, cfg) for name, mod, cfg in plan if not on_meta(mod)]
    needs = [(name, cfg) for name, _, cfg in plan if cfg.needs_calibration]
    if needs and calibration_data is None:
        name, cfg = needs[0]
        raise ValueError(f"convert: {len(needs)} layer(s) need calibration_data (e.g. {name!r}, {type(cfg).__name__})")
    uses = {name: (mod, cfg) for name, mod, cfg in plan if cfg.needs_calibration or cfg.uses_calibration}
    if not uses or calibration_data is None:
        return {}
    factories = {name: cfg.make_observer for name, (_, cfg) in uses.items()}
    batches = calibration_data
    if not isinstance(calibration_data, (torch.Tensor, dict)) and isinstance(calibration_data, Iterable):
        batches = _progress_bar(calibration_data, progress, "compressops.convert calibration", "batch")
    try:
        observers = calibrate(model, {n: m for n, (m, _) in uses.items()}, batches, factories)
    finally:
        if batches is not calibration_data:
            batches.close()
    out = {}
    for name, obs in observers.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out[name] = obs.result()
            except ValueError as e:
                raise ValueError(f"convert: layer {name!r}: {e}") from None
        for w in caught:  # say which layer
            warnings.warn(f"convert: layer {name!r}: {w.message}", w.category, stacklevel=3)
    return out


def _distinct(configs):
    out = []
    for cfg in configs:
        if not any(cfg == o for o in out):
            out.append(cfg)
    return out


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ValueError("convert: the model itself is a single layer; convert it with "
                         "compressops.nn.<Module>.from_float instead")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
