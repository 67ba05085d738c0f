"""Save and load converted models as safetensors, with the per-layer formats in the metadata."""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from .adapters import as_linear
from .configs import compressed_types, config_from_dict, family_of, model_passes
from .convert import _set_submodule

_META_KEY = "compressops_layers"
_ALIASES_KEY = "compressops_aliases"  # {key: the key whose tensor it shares (tied weights)}


def save(model: nn.Module, path: str) -> None:
    """Write model.state_dict() (canonical formats only) to `path`, plus which layers are compressed."""
    from safetensors.torch import save_file

    # every name of a module used at several places, as its state_dict keys appear under each
    layers = {name: {"class": type(m).__name__, "config": m.config.to_dict()}
              for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, compressed_types())}
    # a layer that reads another's compressed weight (a tied embedding) stores none of its own:
    # the file records whose it reads, and load ties them again
    names = {id(m): name for name, m in model.named_modules()}
    for name, info in layers.items():
        source = getattr(model.get_submodule(name), "tied_source", lambda: None)()
        if source is not None:
            if id(source) not in names:
                raise ValueError(f"save: layer {name!r} reads the weight of a module that is not part of the model")
            info["tied_to"] = names[id(source)]
    state, aliases = _untie(model.state_dict())
    save_file(state, path, metadata={_META_KEY: json.dumps(layers), _ALIASES_KEY: json.dumps(aliases)})


def _untie(state: dict) -> tuple[dict, dict]:
    """(state safetensors can write, {alias key: kept key}).

    A tensor tied under several keys (the same storage, offset, shape and strides) is written once
    and its other keys recorded as aliases, which load re-ties; any other tensor sharing memory with
    an earlier one (a view into it) is written as its own copy.
    """
    out, aliases, seen, storages = {}, {}, {}, set()
    for key, t in state.items():
        if t.device.type == "meta":
            raise ValueError(f"save: {key} is on the meta device (it holds no data to save)")
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        shared = t.numel() and t.untyped_storage().data_ptr() in storages
        storages.add(t.untyped_storage().data_ptr())
        out[key] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return out, aliases


def load(model: nn.Module, path: str, strict: bool = True) -> nn.Module:
    """Load a file written by save() into `model`, a float skeleton of the same architecture.

    The layers recorded as compressed are replaced by compressed modules of the right shape and the
    file's config (their float weights are not quantized, just replaced; a layer already compressed
    with another config is replaced too), the state dict loads and tied weights are tied again.
    Atomic: every compressed layer is built and loaded off the model and the rest of the file is
    checked against the model (keys, shapes) first; on any error the model is left exactly as it
    was. Once loaded, the model passes convert runs run too (fused Q/K/V). Returns the model
    (modified in place).

    Raises:
        ValueError: the file's layer records do not fit the model (an unknown class or config, a
            layer the model lacks), naming the layer.
        RuntimeError: what load_state_dict refuses: missing or unexpected keys, a shape, a dtype
            other than the format's, NaN/Inf values, a negative scale, naming the key.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    layers = _metadata(metadata, _META_KEY, path)
    aliases = _metadata(metadata, _ALIASES_KEY, path)
    classes = {t.__name__: t for t in compressed_types()}
    state = load_file(path)
    for alias, kept in aliases.items():
        if not isinstance(kept, str) or kept not in state:
            raise ValueError(f"load: {path} ties {alias!r} to {kept!r}, which the file does not hold")
        state[alias] = state[kept]
    staged, fresh = {}, {}  # name -> the loaded module that will replace model's; id(old) -> it
    for name, info in layers.items():
        cls, config = _layer_format(info, name, classes, path)
        old = _submodule(model, name, path)
        if id(old) not in fresh:
            fresh[id(old)] = _fresh_layer(old, cls, config, name, path)
        staged[name] = fresh[id(old)]
    for name, info in layers.items():
        if "tied_to" in info:
            source = staged.get(info["tied_to"]) if isinstance(info["tied_to"], str) else None
            if source is None:
                raise ValueError(f"load: {path} ties layer {name!r} to {info['tied_to']!r}, which the file does not "
                                 f"store as a compressed layer")
            if not hasattr(staged[name], "tie_to"):
                raise ValueError(f"load: {path} ties layer {name!r}, a {type(staged[name]).__name__}, which cannot "
                                 f"read another layer's weight")
            staged[name].tie_to(source)
    # a module used at several places is replaced at each (a file that names only one of them
    # included); compressed layers the file stores no format for load through the same off-model path
    for name, mod in model.named_modules(remove_duplicate=False):
        if name in staged:
            continue
        if id(mod) in fresh:
            staged[name] = fresh[id(mod)]
        elif isinstance(mod, compressed_types()):
            staged[name] = fresh[id(mod)] = copy.deepcopy(mod)
    loaded = set()
    for name, new in staged.items():
        if id(new) not in loaded:  # a shared module loads once, from its first name's entries
            loaded.add(id(new))
            _load_off_model(new, name, {k: v for k, v in state.items() if _under(k, name)}, strict)
    rest = {k: v for k, v in state.items() if not any(_under(k, name) for name in staged)}
    _check_rest(model, staged, rest, strict)
    for name, new in staged.items():  # commit: nothing below can fail on what was checked above
        _set_submodule(model, name, new)
    model.load_state_dict(rest, strict=False)
    for model_pass in model_passes():  # what convert does after converting (fused Q/K/V), for the same model
        model_pass(model)
    return model


def _under(key: str, name: str) -> bool:
    """Whether state_dict `key` belongs to the module called `name`."""
    return key.startswith(name + ".") if name else True


def _metadata(metadata: dict, key: str, path: str) -> dict:
    """The JSON object stored under `key` in a file's metadata ({} when absent)."""
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"load: {path}: the {key} metadata is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"load: {path}: the {key} metadata must be a JSON object, got {type(value).__name__}")
    return value


def _layer_format(info, name: str, classes: dict, path: str) -> tuple[type, object]:
    """(compressed module class, config) of a layer's metadata entry {"class": ..., "config": {...}}."""
    if not (isinstance(info, dict) and isinstance(info.get("class"), str) and isinstance(info.get("config"), dict)):
        raise ValueError(f"load: {path} describes layer {name!r} as {info!r}; expected "
                         f'{{"class": <compressed module class>, "config": {{"format": ..., ...}}}}')
    cls = classes.get(info["class"])
    if cls is None:
        raise ValueError(f"load: {path} stores layer {name!r} as {info['class']}, which is no registered "
                         f"compressed module (known: {', '.join(sorted(classes))})")
    try:
        config = config_from_dict(info["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"load: {path} stores layer {name!r} with an invalid config {info['config']!r}: {e}") from None
    if family_of(cls) is not family_of(config):
        raise ValueError(f"load: {path} stores layer {name!r} as {cls.__name__} with a config of format "
                         f"{config.format_name!r}, which {cls.__name__} does not store")
    return cls, config


def _submodule(model: nn.Module, name: str, path: str) -> nn.Module:
    """model's submodule `name`, or a ValueError saying the file does not fit the model."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"load: {path} stores layer {name!r}, which {type(model).__name__} does not have "
                         f"(is it the model the file was saved from?)") from None


def _fresh_layer(old: nn.Module, cls: type, config, name: str, path: str) -> nn.Module:
    """A new `cls` module with `config`, shaped like `old`, to load into (old itself is not touched).

    The file's config wins: a layer compressed otherwise (another class or config) is rebuilt from
    its float equivalent, so e.g. a W8A8 file never runs weight-only.
    """
    if isinstance(old, cls) and old.config == config:
        return copy.deepcopy(old)
    if isinstance(old, compressed_types()):
        old = old.to_float()
    old = as_linear(old)  # a GPT-2 Conv1D is shaped by the Linear it stands for
    if not isinstance(old, cls.float_type):
        raise ValueError(f"load: {path} stores layer {name!r} as {cls.__name__}, which replaces a "
                         f"{cls.float_type.__name__}, but the model holds a {type(old).__name__} there")
    return cls.skeleton(old, config)


def _load_off_model(module: nn.Module, name: str, state: dict, strict: bool) -> None:
    """load_state_dict of `module` as if it sat at `name` (so errors name the model's keys)."""
    holder = nn.Module()
    if name:
        parent = holder
        *path, last = name.split(".")
        for part in path:
            parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(last, module)
    else:
        holder = module
    holder.load_state_dict(state, strict=strict)


def _check_rest(model: nn.Module, staged: dict, rest: dict, strict: bool) -> None:
    """Raise unless `rest` (the file's entries outside the staged layers) loads into the rest of the
    model: no missing or unexpected key (strict), every shape the model's."""
    expected = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        if any(_under(mname + ".", name) for name in staged):  # the layer itself or inside it
            continue
        prefix = mname + "." if mname else ""
        for pname, t in mod._parameters.items():
            if t is not None:
                expected[prefix + pname] = t
        for bname, t in mod._buffers.items():
            if t is not None and bname not in mod._non_persistent_buffers_set:
                expected[prefix + bname] = t
    problems = []
    if strict:
        missing = sorted(set(expected) - set(rest))
        unexpected = sorted(set(rest) - set(expected))
        if missing:
            problems.append(f"Missing key(s) in state_dict: {', '.join(map(repr, missing))}.")
        if unexpected:
            problems.append(f"Unexpected key(s) in state_dict: {', '.join(map(repr, unexpected))}.")
    for key in sorted(set(expected) & set(rest)):
        if tuple(rest[key].shape) != tuple(expected[key].shape):
            problems.append(f"size mismatch for {key}: copying a param with shape {tuple(rest[key].shape)} from "
                            f"checkpoint, the shape in current model is {tuple(expected[key].shape)}.")
    if problems:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}:\n\t" + "\n\t".join(problems))
