"""What a Hugging Face checkpoint of a converted model records about its compressed layers.

convert writes it into a transformers model's `config.quantization_config` (so a plain
`model.save_pretrained(d)` puts it into config.json); compressops.hf reads it back in
`from_pretrained`. Nothing here imports transformers: a transformers model is recognised by its
class's module, and the record is a plain JSON-able dict.

The record (config.json's "quantization_config"):
    {"quant_method": "compressops",
     "format_version": 1,
     "config": <what convert was asked for: one config dict (Config.to_dict), a
                {fnmatch pattern: config dict or null} mapping, or null>,
     "layers": {<module name>: {"class": <compressed module class>, "config": <Config.to_dict()>}}}
"layers" is what from_pretrained rebuilds (every name of a module used at several places is
listed); "config" is what a `from_pretrained(fp32_dir, quantization_config=...)` converts with.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from torch import nn

from .configs import Config, compressed_types

__all__ = ["FORMAT_VERSION", "QUANT_METHOD", "config_from_json", "config_to_json", "is_hf_model", "layers_of",
           "record", "untie"]

QUANT_METHOD = "compressops"
FORMAT_VERSION = 1


def layers_of(model: nn.Module) -> dict[str, dict]:
    """{module name: {"class": compressed module class name, "config": config dict}} of every compressed
    layer of `model`, under each of its names; a layer that reads another's compressed weight (a tied
    embedding, which saves no tensor of its own) also has "tied_to": that layer's name."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, compressed_types()):
            out[name] = {"class": type(m).__name__, "config": m.config.to_dict()}
            source = getattr(m, "tied_source", lambda: None)()
            if source is not None:
                out[name]["tied_to"] = names[id(source)]
    return out


def config_to_json(config) -> dict | None:
    """The JSON form of what convert accepts: a Config -> its to_dict(); a {pattern: Config or None}
    mapping -> {pattern: dict or None}; None -> None.

    Raises:
        TypeError: anything else (the message names what was given).
    """
    if config is None:
        return None
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, Mapping):
        out = {}
        for pattern, cfg in config.items():
            if not isinstance(pattern, str) or not (cfg is None or isinstance(cfg, Config)):
                raise TypeError(f"config: a mapping must map fnmatch patterns (str) to compressops configs or None, "
                                f"got {pattern!r}: {cfg!r}")
            out[pattern] = None if cfg is None else cfg.to_dict()
        return out
    raise TypeError(f"config must be a compressops config, a {{pattern: config or None}} mapping or None, "
                    f"got {type(config).__name__}")


def config_from_json(obj):
    """Inverse of config_to_json: a Config, a {pattern: Config or None} dict, or None.

    Raises:
        TypeError: `obj` is not a dict (or None).
        ValueError: a malformed or unknown config dict (the message names it).
    """
    if obj is None or isinstance(obj, Config):
        return obj
    if not isinstance(obj, Mapping):
        raise TypeError(f"config: expected a config dict, a {{pattern: config dict or null}} mapping or null, "
                         f"got {obj!r}")
    if isinstance(obj.get("format"), str):  # one config; a mapping's values are dicts or null
        return Config.from_dict(obj)
    out = {}
    for pattern, cfg in obj.items():
        if not (cfg is None or isinstance(cfg, (Mapping, Config))):
            raise ValueError(f"config: pattern {pattern!r} maps to {cfg!r}; expected a config dict or null")
        out[pattern] = cfg if cfg is None or isinstance(cfg, Config) else Config.from_dict(cfg)
    return out


def is_hf_model(model: nn.Module) -> bool:
    """Whether `model` is a transformers PreTrainedModel (checked without importing transformers)."""
    return (any(t.__name__ == "PreTrainedModel" and t.__module__.startswith("transformers.")
                for t in type(model).__mro__) and hasattr(getattr(model, "config", None), "to_dict"))


def untie(model: nn.Module, names) -> None:
    """Drop the weight ties (transformers' `all_tied_weights_keys`, {target key: source key}, on the
    model and every sub-model) that involve a parameter of the layers called `names`.

    A tied pair one side of which is compressed is no longer one tensor: GPT-2's lm_head converted
    alone holds int8 values while wte keeps its float weight. Both are saved, and tying them again
    (tie_weights, from_pretrained) would overwrite one with the other; dropping the tie keeps each.
    """
    names = list(names)
    for prefix, sub in model.named_modules():
        tied = getattr(sub, "all_tied_weights_keys", None)
        if not isinstance(tied, dict):
            continue
        at = prefix + "." if prefix else ""
        for target, source in list(tied.items()):
            if any((at + key).startswith(name + ".") for key in (target, source) for name in names):
                tied.pop(target)


def record(model: nn.Module, config=None) -> None:
    """Write the record of `model`'s compressed layers into model.config.quantization_config when
    `model` is a transformers model (nothing otherwise), so save_pretrained saves it.

    An existing compressops record keeps its "config" unless `config` (what convert was given) is
    passed; a CompressopsConfig object (from a from_pretrained that converted on load) is updated in
    place. A model quantized by another method keeps its record, with a warning (save_pretrained
    then does not describe the compressed layers).
    """
    if not is_hf_model(model):
        return
    layers = layers_of(model)
    untie(model, layers)
    existing = getattr(model.config, "quantization_config", None)
    method = existing.get("quant_method") if isinstance(existing, Mapping) else getattr(existing, "quant_method", None)
    if existing is not None and method != QUANT_METHOD:
        warnings.warn(f"convert: {type(model).__name__} is already quantized with {method!r}; its "
                      f"config.quantization_config is left as it is, so save_pretrained will not describe the "
                      f"compressops layers", stacklevel=3)
        return
    if not layers and existing is None:
        return
    if existing is not None and not isinstance(existing, Mapping):  # compressops.hf.CompressopsConfig
        existing.layers = layers
        if config is not None:
            existing.config = config_to_json(config)
        return
    previous = existing.get("config") if isinstance(existing, Mapping) else None
    model.config.quantization_config = {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
        "config": config_to_json(config) if config is not None else previous, "layers": layers,
    }
