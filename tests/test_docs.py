"""The documentation site builds without a single warning (mkdocs --strict: griffe's docstring
checks, broken links) and its API reference documents every public name."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import compressops as co

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "WARNING" not in log, log[-5000:]
    return out


def _anchors(site: Path) -> set[str]:
    ids = set()
    for page in (site / "api").rglob("*.html"):
        ids.update(re.findall(r'id="(compressops[\w.]*)"', page.read_text()))
    return ids


def _documented_as(obj) -> str:
    """The anchor mkdocstrings gives obj where it is defined."""
    if isinstance(obj, type(co)):
        return obj.__name__
    return f"{obj.__module__}.{obj.__qualname__}"


@pytest.mark.parametrize("package", ["compressops", "compressops.nn", "compressops.ops", "compressops.configs"])
def test_api_reference_documents_every_public_name(site, package):
    anchors = _anchors(site)
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if _documented_as(getattr(module, name)) not in anchors]
    assert not missing, f"{package}.__all__ names without an entry in the API reference: {missing}"


def test_every_page_is_in_the_nav_and_built(site):
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert f": {rel}" in nav, f"docs/{rel} is not in mkdocs.yml's nav"
        built = "index.html" if rel == "index.md" else rel.removesuffix(".md") + "/index.html"
        assert (site / built).exists(), built
