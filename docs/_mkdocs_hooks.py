"""MkDocs hook (mkdocs.yml `hooks:`): drops one known-spurious griffe warning, nothing else.

compressops.ops and compressops.reference build `__all__` at import time from their family modules
(`__all__ += _module.__all__` in a loop over pkgutil.iter_modules), so that a new family needs no
edit there. Griffe reads the package statically, cannot follow that loop and warns "Unsupported item
in compressops.ops.__all__". The API pages document each family module directly, so nothing is
missing from the site; every other griffe warning still fails the strict build.
"""

import logging
import re

_SPURIOUS = re.compile(r"Unsupported item in compressops\.(ops|reference)\.__all__: __all__ \(use strings only\)")


def _keep(record: logging.LogRecord) -> bool:
    return not _SPURIOUS.search(record.getMessage())


def on_startup(command, dirty):
    """Install the filter once, before griffe loads the package."""
    logging.getLogger("mkdocs.plugins.griffe").addFilter(_keep)
