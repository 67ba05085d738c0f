"""Hugging Face transformers integration: a quantization config and quantizer for compressops.

    import compressops as co
    model = co.convert(AutoModel.from_pretrained(fp32_dir), co.Int8())
    model.save_pretrained(out_dir)                   # config.json gets a "quantization_config"
    model = AutoModel.from_pretrained(out_dir)       # the compressed layers, exactly as saved
    model = AutoModel.from_pretrained(fp32_dir, quantization_config=co.hf.CompressopsConfig(co.Int8()))

`import compressops` registers the quantizer as soon as transformers' quantizer registry is
imported (an import hook: importing transformers costs seconds, which `import compressops` does not
pay); `import compressops.hf` registers it at once. Either must happen before `from_pretrained` of a
compressops checkpoint. This module imports transformers; the record it reads and writes is defined
in compressops.hf_record, which does not. Written against transformers 5.24 (its loader, weight ties
and `_keys_to_ignore_on_load_unexpected`); tests/test_hf.py checks the round trips.

Loading: before the checkpoint is read, each recorded layer is replaced by a placeholder (so
transformers' loader, which assigns tensors to parameters one by one, leaves its entries alone);
afterwards the compressed layer is built from the layer it replaces (its `skeleton`), its entries are
read from the safetensors files and loaded with load_state_dict (dtypes, shapes and values checked,
the kernel layout packed once), and it takes the placeholder's place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

try:
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as e:
    raise ImportError(f"compressops.hf needs transformers with register_quantizer (pip install transformers): "
                      f"{e}") from e

from .adapters import as_linear
from .configs import Config, compressed_types, family_of, model_passes
from .convert import _set_submodule, convert
from .hf_record import FORMAT_VERSION, QUANT_METHOD, config_from_json, config_to_json, record, untie

__all__ = ["CompressopsConfig", "CompressopsHfQuantizer", "attach_config", "convert_pretrained", "register"]

# Files of a model folder that save_pretrained writes itself (weights, their index, the configs):
# convert_pretrained copies every other top-level file (tokenizer, vocabulary, README, ...).
_WRITTEN_BY_SAVE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf)$|.*\.index\.json$"
                              r"|config\.json$|generation_config\.json$")


class CompressopsConfig(QuantizationConfigMixin):
    """The `quantization_config` of a compressops model (quant_method "compressops").

    Args:
        config: what convert converts with on load (`from_pretrained(fp32_dir, quantization_config=...)`):
            a compressops config (co.Int8()), a {fnmatch pattern: config or None} mapping, or their
            dict forms (Config.to_dict()); None for a checkpoint that only records its layers.
        layers: {module name: {"class": compressed module class, "config": config dict}}, the
            compressed layers a saved checkpoint holds (written by convert; see compressops.hf_record).
        format_version: the record's version (1).

    Example:
        >>> qc = CompressopsConfig(co.Int4(group_size=64))
        >>> model = AutoModelForCausalLM.from_pretrained(fp32_dir, quantization_config=qc)

    Raises:
        TypeError / ValueError: a config or layers entry that is not one of the above, an unknown
            keyword, or a format_version newer than this compressops reads.
    """

    def __init__(self, config=None, layers: Mapping | None = None, format_version: int = FORMAT_VERSION,
                 quant_method: str = QUANT_METHOD, **kwargs):
        if quant_method != QUANT_METHOD:
            raise ValueError(f"CompressopsConfig: quant_method must be {QUANT_METHOD!r}, got {quant_method!r}")
        if kwargs:
            raise TypeError(f"CompressopsConfig: unknown argument(s) {', '.join(sorted(kwargs))} (a record written "
                            f"by a newer compressops?)")
        if not isinstance(format_version, int) or format_version > FORMAT_VERSION:
            raise ValueError(f"CompressopsConfig: format_version {format_version!r} is newer than this compressops "
                             f"reads ({FORMAT_VERSION}); upgrade compressops")
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.config = config_to_json(config_from_json(config))  # validates, keeps the JSON form
        layers = dict(layers or {})
        for name, info in layers.items():
            if not (isinstance(name, str) and isinstance(info, Mapping) and isinstance(info.get("class"), str)
                    and isinstance(info.get("config"), Mapping)):
                raise TypeError(f"CompressopsConfig: layers[{name!r}] = {info!r}; expected "
                                f'{{"class": <compressed module class>, "config": {{"format": ..., ...}}}}')
        self.layers = layers

    def compressops_config(self):
        """The config convert takes (a Config, a {pattern: Config or None} dict) or None."""
        return config_from_json(self.config)

    def to_dict(self) -> dict:
        """The JSON form written into config.json."""
        return {"quant_method": QUANT_METHOD, "format_version": self.format_version, "config": self.config,
                "layers": dict(self.layers)}


class CompressopsHfQuantizer(HfQuantizer):
    """transformers' hook into from_pretrained for compressops checkpoints and convert-on-load.

    Pre-quantized (config.json holds a compressops record): the recorded layers are rebuilt and
    loaded from the checkpoint exactly. Otherwise (`quantization_config=CompressopsConfig(cfg)` with
    an fp32 checkpoint): the model loads in float and is converted with `cfg` afterwards, which gives
    what co.convert(model, cfg) gives.
    """

    requires_calibration = False
    quantization_config: CompressopsConfig

    def __init__(self, quantization_config: CompressopsConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._pending: dict[str, tuple[str, nn.Module]] = {}  # model name -> (checkpoint name, skeleton)
        self._checkpoint_files: list[str] = []

    def validate_environment(self, *args, **kwargs):
        qc = self.quantization_config
        if self.pre_quantized and not qc.layers:
            raise ValueError("compressops: the checkpoint's quantization_config records no compressed layers")
        if not self.pre_quantized and qc.config is None:
            raise ValueError("compressops: from_pretrained of a float checkpoint needs "
                             "CompressopsConfig(config) with the config to convert with (e.g. co.Int8())")

    def update_device_map(self, device_map):
        return device_map

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            return
        files = [str(f) for f in (checkpoint_files or [])]
        if not files or not all(f.endswith(".safetensors") for f in files):
            raise ValueError(f"compressops: a compressops checkpoint loads from safetensors files, got {files!r}")
        self._checkpoint_files = files
        classes = {t.__name__: t for t in compressed_types()}
        skeletons: dict[int, nn.Module] = {}  # a module used under several names gets one skeleton
        ignore = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
        for ckpt_name, info in self.quantization_config.layers.items():
            name = _model_name(model, ckpt_name)
            if name is None:  # e.g. lm_head of a causal-LM checkpoint loaded into the base model:
                continue      # its entries stay unexpected keys, which transformers reports
            cls = classes.get(info["class"])
            if cls is None:
                raise ValueError(f"compressops: the checkpoint stores {ckpt_name!r} as {info['class']}, which is no "
                                 f"registered compressed module (known: {', '.join(sorted(classes))})")
            config = Config.from_dict(info["config"])
            if family_of(cls) is not family_of(config):
                raise ValueError(f"compressops: the checkpoint stores {ckpt_name!r} as {cls.__name__} with a "
                                 f"{config.format_name!r} config, which {cls.__name__} does not store")
            old = model.get_submodule(name)
            if id(old) not in skeletons:
                float_mod = as_linear(old)
                if not isinstance(float_mod, cls.float_type):
                    raise ValueError(f"compressops: the checkpoint stores {ckpt_name!r} as {cls.__name__}, which "
                                     f"replaces a {cls.float_type.__name__}, but {type(model).__name__} holds a "
                                     f"{type(old).__name__} there")
                skeletons[id(old)] = cls.skeleton(float_mod, config)
            self._pending[name] = (ckpt_name, skeletons[id(old)])
            _set_submodule(model, name, _Placeholder(name, old))
            # transformers' loader finds no parameter for these entries; they are ours (read below)
            ignore.add(rf"^{re.escape(ckpt_name)}\.")
            ignore.add(rf"^{re.escape(name)}\.")
        model._keys_to_ignore_on_load_unexpected = ignore
        untie(model, self._pending)  # a compressed layer is not tied to its float partner (hf_record.untie)

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            convert(model, self.quantization_config.compressops_config())
            return model
        from safetensors import safe_open

        by_ckpt = {ckpt: name for name, (ckpt, _) in self._pending.items()}
        states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self._pending}
        for path in self._checkpoint_files:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    layer, _, rest = key.rpartition(".")
                    while layer and layer not in by_ckpt:  # the longest recorded layer name the key is under
                        layer, _, more = layer.rpartition(".")
                        rest = f"{more}.{rest}"
                    if layer:
                        states[by_ckpt[layer]][rest] = f.get_tensor(key)
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        loaded: dict[int, nn.Module] = {}
        layer_of: dict[str, nn.Module] = {}  # checkpoint name -> its loaded layer
        ties = []  # (layer, checkpoint name of the layer whose weight it reads)
        records = self.quantization_config.layers
        for name, (ckpt_name, skeleton) in self._pending.items():
            if id(skeleton) not in loaded:
                layer = skeleton.to_empty(device=device) if _on_meta(skeleton) else skeleton.to(device)
                tied_to = records[ckpt_name].get("tied_to")
                if tied_to is not None:  # holds no tensor of its own: tied once every layer is loaded
                    ties.append((layer, ckpt_name, tied_to))
                else:
                    try:
                        layer.load_state_dict(states[name], strict=True)
                    except RuntimeError as e:
                        raise RuntimeError(f"compressops: loading layer {ckpt_name!r} from {self._checkpoint_files}: "
                                           f"{e}") from None
                loaded[id(skeleton)] = layer
            layer_of[ckpt_name] = loaded[id(skeleton)]
            _set_submodule(model, name, loaded[id(skeleton)])
        for layer, ckpt_name, tied_to in ties:
            source = layer_of.get(tied_to) if isinstance(tied_to, str) else None
            if source is None or not hasattr(layer, "tie_to"):
                raise ValueError(f"compressops: the checkpoint ties {ckpt_name!r} to {tied_to!r}, which it does not "
                                 f"load as a compressed layer that {type(layer).__name__} can read")
            layer.tie_to(source)
        self._pending.clear()
        for model_pass in model_passes():  # what convert does after converting (fused Q/K/V)
            model_pass(model)
        return model

    def _dequantize(self, model, dtype=None):
        """model.dequantize(): every compressed layer becomes its float equivalent (to_float(), an
        nn.Linear with the dequantized weight), in `dtype` when given."""
        if isinstance(dtype, str):  # transformers passes config.dtype, e.g. "float32"
            dtype = getattr(torch, dtype)
        floats: dict[int, nn.Module] = {}
        for name, mod in list(model.named_modules(remove_duplicate=False)):
            if isinstance(mod, compressed_types()):
                if id(mod) not in floats:
                    floats[id(mod)] = mod.to_float() if dtype is None else mod.to_float().to(dtype)
                _set_submodule(model, name, floats[id(mod)])
        return model

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


class _Placeholder(nn.Module):
    """Holds a compressed layer's place while transformers loads the rest of the checkpoint.

    It has no state_dict entries (the loader leaves the layer's entries alone), but carries the
    replaced module's parameters as plain meta tensors: a parent's weight init reads them
    (GPT-2 initializes `attn.c_proj.weight` from the attention module).
    """

    def __init__(self, name: str, replaced: nn.Module):
        super().__init__()
        self.name = name
        for pname, p in replaced.named_parameters(recurse=False):
            object.__setattr__(self, pname, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"compressops: layer {self.name!r} was not loaded (from_pretrained did not finish)")


def _on_meta(module: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in module.buffers())


def _model_name(model: nn.Module, ckpt_name: str) -> str | None:
    """The name in `model` of the layer a checkpoint records as `ckpt_name`: the same name, or with the
    base model prefix added or removed (a checkpoint of BertModel loaded into BertForX, or back);
    None when `model` has no such layer."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [ckpt_name]
    if prefix:
        candidates += [f"{prefix}.{ckpt_name}", ckpt_name.removeprefix(prefix + ".")]
    for name in candidates:
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            continue
    return None


def attach_config(model: nn.Module, config=None) -> nn.Module:
    """Record `model`'s compressed layers in model.config.quantization_config (convert does this
    itself; call it after changing layers by hand, e.g. converting a submodule). Returns `model`.

    Raises:
        TypeError: `model` is not a transformers PreTrainedModel.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"attach_config: model must be a transformers PreTrainedModel, got {type(model).__name__}")
    record(model, config)
    return model


def convert_pretrained(model_dir, out_dir, config, *, model_class: str | None = None, progress: bool | None = None):
    """Load a Hugging Face model folder, convert it, and save it with its quantization_config.

    Args:
        model_dir: a folder written by save_pretrained (config.json + safetensors), read offline.
        out_dir: where to save the converted model (created; must not be model_dir). The model
            folder's other top-level files (tokenizer, vocabulary, ...) are copied there.
        config: what compressops.convert takes (a config or a {pattern: config or None} mapping).
        model_class: a transformers class name (e.g. "AutoModelForCausalLM"); default: the
            architecture config.json names, else AutoModel.
        progress: convert's progress bar (default: convert's own rule).
    Returns:
        (the converted model, its compressops.report).
    Raises:
        ValueError: out_dir is model_dir, a model class transformers does not have, or what
            convert raises (e.g. a config that needs calibration data).
    """
    import shutil
    from pathlib import Path

    import transformers

    from .report import report

    src, dst = Path(model_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise ValueError(f"convert_pretrained: {src} holds no config.json (expected a save_pretrained folder)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"convert_pretrained: out_dir must differ from model_dir ({src})")
    if model_class is None:
        hf_config = transformers.AutoConfig.from_pretrained(src)
        names = [a for a in (getattr(hf_config, "architectures", None) or []) if hasattr(transformers, a)]
        model_class = names[0] if names else "AutoModel"
    cls = getattr(transformers, model_class, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"convert_pretrained: transformers has no model class {model_class!r}")
    model = cls.from_pretrained(src).eval()
    convert(model, config, progress=progress)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    for f in sorted(src.iterdir()):
        if f.is_file() and not _WRITTEN_BY_SAVE.fullmatch(f.name):
            shutil.copy2(f, dst / f.name)
    return model, report(model)


def register() -> None:
    """Register CompressopsConfig and CompressopsHfQuantizer with transformers (idempotent)."""
    if QUANT_METHOD in AUTO_QUANTIZER_MAPPING:
        return
    register_quantization_config(QUANT_METHOD)(CompressopsConfig)
    register_quantizer(QUANT_METHOD)(CompressopsHfQuantizer)


register()
