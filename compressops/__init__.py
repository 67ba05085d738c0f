"""compressops: fast kernels and drop-in modules for compressed neural-network layers.

    import compressops as co
    model = co.convert(model, config)   # config: an instance of any class in compressops.configs
    print(co.report(model))

Every registered config class (compressops.configs) is exported here by name (co.<ConfigName>).
"""

from . import _loader  # noqa: F401  (first: loading the native library registers the op schemas)
from . import ops  # noqa: F401  (fakes and reference kernels for every op)
from . import configs
from . import nn  # noqa: F401  (importing the modules registers every family)
from .convert import convert
from .io import load, save
from .isa import available_isas, cpu_isa, detected_isa, isa, set_isa
from .report import report
from .routes import current_sparse_route, set_sparse_route, sparse_route

__version__ = "0.1.0"


def info() -> dict:
    """Build info, load status, CPU ISA levels and per-op kernels (see compressops.info)."""
    from .info import info as _info

    # Importing the submodule binds compressops.info to it, over this function: bind the function back
    # so that a second co.info() call works.
    globals()["info"] = _info_function
    return _info()


_info_function = info

__all__ = ["convert", "report", "save", "load", "info", "isa", "detected_isa", "available_isas", "cpu_isa",
           "set_isa", "sparse_route", "set_sparse_route", "current_sparse_route", "configs", "nn", "ops"]

for _cls in configs.config_types():
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
del _cls

# transformers integration (compressops.hf): registered when transformers' quantizers load, never
# importing transformers here (it costs seconds)
from . import _hf_hook

_hf_hook.install()


def __getattr__(name: str):
    # co.hf (the transformers integration) imports transformers on first use only
    if name == "hf":
        import importlib

        return importlib.import_module(f"{__name__}.hf")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
