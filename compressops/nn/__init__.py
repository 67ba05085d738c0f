"""Drop-in compressed modules.

Every module of this package is imported here (which registers its family, see
compressops.configs.register_family) and the names in its `__all__` are re-exported, so a new
family's module file needs no edit here.
"""

import importlib
import pkgutil

__all__: list[str] = []

for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
