"""Save and load converted models as safetensors, with the per-layer formats in the metadata."""

from __future__ import annotations

import json

import torch
from torch import nn

from .configs import compressed_types, config_from_dict
from .convert import _set_submodule

_META_KEY = "compressops_layers"
_ALIASES_KEY = "compressops_aliases"  # {key: the key whose tensor it shares (tied weights)}


def save(model: nn.Module, path: str) -> None:
    """Write model.state_dict() (canonical formats only) to `path`, plus which layers are compressed."""
    from safetensors.torch import save_file

    layers = {name: {"class": type(m).__name__, "config": m.config.to_dict()}
              for name, m in model.named_modules() if isinstance(m, compressed_types())}
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

    The layers recorded as compressed are first replaced by empty compressed modules of the
    right shape and the file's config (their float weights are not quantized, just replaced; a
    layer already compressed with another config is replaced too), then the state dict loads and
    tied weights are tied again. Returns the model (modified in place).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    layers = json.loads(metadata.get(_META_KEY, "{}"))
    aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    classes = {t.__name__: t for t in compressed_types()}
    for name, info in layers.items():
        cls = classes.get(info["class"])
        if cls is None:
            raise ValueError(f"load: {path} stores layer {name!r} as {info['class']}, which is no registered "
                             f"compressed module (known: {', '.join(sorted(classes))})")
        cfg = config_from_dict(info["config"])
        old = model.get_submodule(name)
        if isinstance(old, cls) and old.config == cfg:
            continue
        # The file's config wins: a layer compressed otherwise (another class or config) is rebuilt
        # from its float equivalent, so e.g. a W8A8 file never runs weight-only.
        if isinstance(old, compressed_types()):
            old = old.to_float()
        _set_submodule(model, name, cls.skeleton(old, cfg))
    state = load_file(path)
    for alias, kept in aliases.items():
        if kept not in state:
            raise ValueError(f"load: {path} ties {alias!r} to {kept!r}, which the file does not hold")
        state[alias] = state[kept]
    model.load_state_dict(state, strict=strict)
    return model
