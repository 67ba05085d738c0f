"""Register compressops with transformers when transformers' quantizer registry is imported.

Importing transformers' quantizers takes seconds, so `import compressops` does not do it: if
`transformers.quantizers.auto` is loaded already, compressops.hf registers at once; otherwise an
import hook registers it right after that module first loads (from_pretrained imports it). Either
way, a process that imported compressops loads compressops checkpoints with from_pretrained.
Without transformers installed, the hook never fires.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

_TARGET = "transformers.quantizers.auto"


def _register() -> None:
    pending = sys.modules.get(f"{__package__}.hf")
    if pending is not None and not hasattr(pending, "register"):
        return  # compressops.hf is importing transformers itself; it registers when it finishes
    try:
        from . import hf

        hf.register()
    except Exception as e:  # an incompatible transformers must not break the user's import of it
        warnings.warn(f"compressops: could not register the transformers quantizer ({type(e).__name__}: {e}); "
                      f"from_pretrained will not rebuild compressops layers", RuntimeWarning, stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """The target module's own loader, plus registration once the module has run."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        uninstall()  # fires once; the other finders locate the module
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else when it loads."""
    if sys.modules.get(_TARGET) is not None:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the import hook (registration already done is kept)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
