"""Save and load converted models as safetensors, with the per-layer formats in the metadata."""

from __future__ import annotations

import json

from torch import nn

from .configs import compressed_types, config_from_dict
from .convert import _set_submodule

_META_KEY = "compressops_layers"


def save(model: nn.Module, path: str) -> None:
    """Write model.state_dict() (canonical formats only) to `path`, plus which layers are compressed."""
    from safetensors.torch import save_file

    layers = {name: {"class": type(m).__name__, "config": m.config.to_dict()}
              for name, m in model.named_modules() if isinstance(m, compressed_types())}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={_META_KEY: json.dumps(layers)})


def load(model: nn.Module, path: str, strict: bool = True) -> nn.Module:
    """Load a file written by save() into `model`, a float skeleton of the same architecture.

    The layers recorded as compressed are first replaced by empty compressed modules of the
    right shape (their float weights are not quantized, just replaced), then the state dict loads.
    Returns the model (modified in place).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        layers = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
    classes = {t.__name__: t for t in compressed_types()}
    for name, info in layers.items():
        cls = classes.get(info["class"])
        if cls is None:
            raise ValueError(f"load: {path} stores layer {name!r} as {info['class']}, which is no registered "
                             f"compressed module (known: {', '.join(sorted(classes))})")
        cfg = config_from_dict(info["config"])
        old = model.get_submodule(name)
        if isinstance(old, cls):
            continue
        _set_submodule(model, name, cls.skeleton(old, cfg))
    model.load_state_dict(load_file(path), strict=strict)
    return model
