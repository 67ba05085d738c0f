"""Conversion configs, the protocol compressops.convert speaks to them through, and the family registry.

A family is one compression format: a config (a frozen dataclass subclassing Config, in its own file
here), the compressed module(s) that hold the format (compressops/nn), and the function that turns a
float module into one. The nn module file that defines the compressed module registers the family
with register_family(Family(...)); Config's hooks forward to it, so convert, save/load and report know
every family without naming any. This package imports nothing else from compressops (it is the bottom
layer); its submodules are imported automatically, so a new family's config is one new file.
"""

from __future__ import annotations

import functools
import importlib
import numbers
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

# saved format name -> config class (filled by Config.__init_subclass__)
_FORMATS: dict[str, type[Config]] = {}
# config class -> its family (filled by register_family)
_FAMILIES: dict[type[Config], Family] = {}
# functions convert runs over the whole model once its layers are converted (register_model_pass)
_MODEL_PASSES: list[Callable] = []


class Config:
    """Base of every conversion config: the protocol compressops.convert uses.

    Subclass it as a frozen dataclass with the saved format name::

        @dataclass(frozen=True)
        class Fp8(Config, format_name="fp8"):
            keep_bias_fp32: bool = True

    The hooks below (accepts ... convert_module) forward to the family registered for the class
    (register_family); a config overrides needs_calibration / uses_calibration when they depend on
    its fields.
    """

    format_name: ClassVar[str]
    # Why convert leaves a layer dense when model_filter(model) rejects it (shown by compressops.report).
    model_filter_reason: ClassVar[str] = "the config's model_filter left it dense"

    def __init_subclass__(cls, format_name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:  # a subclass's own checks run after the type check of every field
            @functools.wraps(own)
            def post_init(self, _own=own):
                Config.__post_init__(self)
                _own(self)
            cls.__post_init__ = post_init
        if format_name is None:
            return
        old = _FORMATS.get(format_name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"format name {format_name!r} is taken by {old.__qualname__}")
        cls.format_name = format_name
        _FORMATS[format_name] = cls

    def __post_init__(self):
        """Check every field against its annotation (int, float, bool, str, or X | None), so a
        wrong type fails here with the field named, not later in a kernel (a group size of 128.0).
        An int field takes no bool or float; a float field takes an int; `object` takes anything."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, allowed = getattr(self, f.name), _allowed_types(hints.get(f.name, object))
            if allowed is None:
                continue
            plain = _as_allowed(value, allowed)
            if plain is not None:
                object.__setattr__(self, f.name, plain[0])  # numpy/torch scalars become int/float
                continue
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise TypeError(f"{type(self).__name__}({f.name}={value!r}): {f.name} must be {names}, "
                            f"got {type(value).__name__}")

    @property
    def needs_calibration(self) -> bool:
        """True when convert must get calibration_data for this config (it raises otherwise)."""
        return False

    @property
    def uses_calibration(self) -> bool:
        """True when convert runs the calibration_data it is given through this config's observer."""
        return self.needs_calibration

    def to_dict(self) -> dict:
        """{"format": format_name, **fields}: what compressops.save writes (inverse: Config.from_dict)."""
        return {"format": self.format_name, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Config:
        """The config `d` (a to_dict() result) describes, of the class its "format" names.

        Raises:
            ValueError: no "format" key, an unknown format, or one that is not a `cls`.
        """
        d = dict(d)
        if "format" not in d:
            raise ValueError(f"a config dict needs a 'format' key (one of {', '.join(sorted(_FORMATS))}), got {d!r}")
        fmt = d.pop("format")
        klass = _FORMATS.get(fmt)
        if klass is None:
            raise ValueError(f"unknown compressops format {fmt!r} (known: {', '.join(sorted(_FORMATS))})")
        if not issubclass(klass, cls):
            raise ValueError(f"format {fmt!r} is a {klass.__name__}, not a {cls.__name__}")
        return klass(**d)

    # -- hooks convert calls; each forwards to the registered family ----------------------------
    def accepts(self, module) -> bool:
        """Whether `module`'s type is one this config converts (the family's `converts`)."""
        return isinstance(module, family_of(self).converts)

    def unsupported_reason(self, module) -> str | None:
        """Why convert leaves an accepted `module` dense (None: it converts)."""
        hook = family_of(self).unsupported_reason
        return hook(self, module) if hook is not None else None

    def make_observer(self):
        """A fresh observer for one layer's inputs (observe(x), result()); convert hands its result()
        to convert_module as `calibration`."""
        hook = family_of(self).make_observer
        if hook is None:
            raise TypeError(f"{type(self).__name__} uses calibration data but its family registers no observer")
        return hook(self)

    def prepare(self, layers: list[tuple[str, Any]]) -> dict:
        """Called once with every (name, module) convert converts with this config; returns
        {name: value} handed to convert_module as `prepared` (e.g. one threshold over all layers)."""
        hook = family_of(self).prepare
        return hook(self, layers) if hook is not None else {}

    def model_filter(self, model) -> Callable[[Any, str], bool] | None:
        """A (module, name) -> bool predicate over the whole `model` (False: leave the layer dense,
        with model_filter_reason), or None."""
        hook = family_of(self).model_filter
        return hook(self, model) if hook is not None else None

    def convert_module(self, module, name: str = "", calibration=None, prepared=None):
        """The compressed replacement of float `module` (named `name` in error messages)."""
        return family_of(self).convert(module, self, name, calibration, prepared)


def _allowed_types(hint) -> tuple[type, ...] | None:
    """The plain types a field annotation allows, or None when it allows anything."""
    if hint is object or hint is Any:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(typing.get_args(hint))
    return (hint,) if isinstance(hint, type) else None


def _as_allowed(value, allowed: tuple[type, ...]) -> tuple[Any] | None:
    """(value as the allowed plain type,) or None when no allowed type fits."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):  # no group size is True
        return (bool(value),) if bool in allowed else None
    if int in allowed and isinstance(value, numbers.Integral):
        return (int(value),)
    if float in allowed and isinstance(value, numbers.Real):
        return (float(value),)
    return (value,) if isinstance(value, allowed) else None


@dataclass(frozen=True)
class Family:
    """One compression format, as registered by the nn module file that defines its modules.

    Attributes:
        config: the Config subclass.
        converts: float module types the family converts, e.g. (torch.nn.Linear,).
        modules: the compressed module classes (convert skips them, compressops.load finds them by
            class name, report describes them). Each has from_float, skeleton(float_module, config),
            config, format_label, shape_label, dense_bytes() and compressed_bytes().
        convert: (module, config, name, calibration, prepared) -> compressed module.
        unsupported_reason: optional (config, module) -> str | None.
        make_observer: optional (config) -> observer (needed when a config uses calibration).
        prepare: optional (config, [(name, module)]) -> {name: prepared}.
        model_filter: optional (config, model) -> (module, name) -> bool, or None.
        examples: {name: (config, kind)}, kind "linear" or "conv": small configs that together
            exercise the family's code paths; the cross-cutting tests (tests/families.py) run each.
        tie: optional ([(name, float module, config, calibration)]) -> {name: compressed module} | str:
            converts modules that share a weight (tied) so that their compressed forms share one
            copy, or says why it cannot (a str: convert then leaves them all dense with it).
            Without it, tied modules stay dense.
    """

    config: type[Config]
    converts: tuple[type, ...]
    modules: tuple[type, ...]
    convert: Callable
    unsupported_reason: Callable | None = None
    make_observer: Callable | None = None
    prepare: Callable | None = None
    model_filter: Callable | None = None
    examples: Mapping[str, tuple[Config, str]] = field(default_factory=dict)
    tie: Callable | None = None

    @property
    def name(self) -> str:
        """The family's saved format name (its config's format_name)."""
        return self.config.format_name


_KINDS = ("linear", "conv")


def register_family(family: Family) -> Family:
    """Register `family` (once per config class); returns it.

    Raises:
        TypeError: config is not a Config subclass with a format_name.
        ValueError: the config already has a family, or an example is malformed.
    """
    cfg = family.config
    if not (isinstance(cfg, type) and issubclass(cfg, Config) and "format_name" in vars(cfg)):
        raise TypeError(f"register_family: config must be a Config subclass with a format_name, got {cfg!r}")
    if cfg in _FAMILIES:
        raise ValueError(f"register_family: {cfg.__name__} already has a family")
    for name, (example, kind) in family.examples.items():
        if type(example) is not cfg or kind not in _KINDS:
            raise ValueError(f"register_family: example {name!r} must be ({cfg.__name__}(...), one of {_KINDS})")
    _FAMILIES[cfg] = family
    return family


def register_model_pass(fn: Callable) -> Callable:
    """Register fn(model) -> int to run over the whole model at the end of every compressops.convert
    (and compressops.load), after the layers are converted: a rewrite across converted layers that
    changes no result (e.g. compressops.nn.fused_qkv). It returns how many places it changed. Returns fn.

    Raises:
        TypeError: fn is not callable.
    """
    if not callable(fn):
        raise TypeError(f"register_model_pass: expected a callable, got {type(fn).__name__}")
    if fn not in _MODEL_PASSES:
        _MODEL_PASSES.append(fn)
    return fn


def model_passes() -> tuple[Callable, ...]:
    """The registered model passes, in registration order."""
    return tuple(_MODEL_PASSES)


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def family_of(config_or_type) -> Family:
    """The family of a config, a config class, or a compressed module (instance or class).

    Raises:
        TypeError: nothing registered for it.
    """
    t = config_or_type if isinstance(config_or_type, type) else type(config_or_type)
    fam = _FAMILIES.get(t)
    if fam is None:
        fam = next((f for f in _FAMILIES.values() if t in f.modules), None)
    if fam is None:
        what = "is a Config without a registered family" if issubclass(t, Config) else "is not a compressops config"
        raise TypeError(f"{t.__name__} {what}")
    return fam


def compressed_types() -> tuple[type, ...]:
    """Every registered compressed module class."""
    return tuple(t for f in _FAMILIES.values() for t in f.modules)


def config_types() -> tuple[type[Config], ...]:
    """Every config class with a format name (whether or not its family is registered yet)."""
    return tuple(_FORMATS.values())


# The same function under its historical name (compressops.io uses it to read saved formats).
config_from_dict = Config.from_dict

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

for _cls in config_types():
    globals()[_cls.__name__] = _cls

__all__ = ["Config", "Family", "register_family", "families", "family_of", "compressed_types", "config_types",
           "config_from_dict", "register_model_pass", "model_passes", *(c.__name__ for c in config_types())]
