"""The package's modules import one way (DESIGN.md section 2): every import statement in compressops/,
function-local ones included, goes to the importer's own layer or a lower one."""

import ast
import re
from pathlib import Path

import compressops as co

PACKAGE = Path(co.__file__).parent

# (module or package, layer); a module belongs to its longest listed prefix. A new top-level module
# must be added here: an unlisted one is reported.
LAYERS = [
    ("compressops.configs", 0), ("compressops._loader", 0), ("compressops._schemas", 0), ("compressops.isa", 0),
    ("compressops.routes", 0), ("compressops._C", 0),
    ("compressops.formats", 1),
    ("compressops.reference", 2), ("compressops.ops", 2), ("compressops.triton", 2),
    ("compressops.algorithms", 3),
    ("compressops.nn", 4),
    # L5: what uses the modules; workflow modules that orchestrate several layers live here too
    ("compressops.convert", 5), ("compressops.io", 5), ("compressops.report", 5), ("compressops.bnn", 5),
    ("compressops.adapters", 5), ("compressops.hf_record", 5), ("compressops.speedcheck", 5),
    ("compressops", 6), ("compressops.__main__", 6), ("compressops.info", 6), ("compressops.bench", 6),
    ("compressops.hf", 6), ("compressops._hf_hook", 6),
]


# (importer prefix, imported prefix, why) pairs that are forbidden even within the layer order
FORBIDDEN = [
    ("compressops.triton", "compressops.reference", "the Triton kernels never import reference (DESIGN.md section 2)"),
    ("compressops.configs", "compressops", "configs imports nothing outside configs/"),
]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    if best is None or (best[0] == "compressops" and module != "compressops"):
        return None  # the package root's layer does not extend to unlisted submodules
    return best[1]


def package_modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (source file, is_package)} for every .py under `root`, plus native extensions."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    for path in root.glob("*.so"):
        out[f"{root.name}.{path.name.split('.')[0]}"] = (path, False)
    return out


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[str]:
    """Every compressops module `source` (the text of `module`) imports, at any nesting depth.

    `from X import y` counts as importing X.y when X.y is a module in `known`, else X.
    """
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "compressops"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module
            if base.split(".")[0] != "compressops":
                continue
            out += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return out


def violations(modules: dict[str, str], known: set[str], packages: set[str] = frozenset()) -> list[str]:
    """The layer violations in {module name: source}, one line each."""
    out = []
    for module, source in sorted(modules.items()):
        src_layer = layer_of(module)
        if src_layer is None:
            out.append(f"{module} is in no layer (add it to tests/test_layers.py LAYERS)")
            continue
        for target in sorted(set(imports_of(source, module, module in packages, known))):
            dst_layer = layer_of(target)
            if dst_layer is None:
                out.append(f"{module} imports {target}, which is in no layer")
            elif dst_layer > src_layer:
                out.append(f"{module} imports {target} (L{src_layer} -> L{dst_layer})")
            else:
                out += [f"{module} imports {target} ({why})" for src, dst, why in FORBIDDEN
                        if _under(module, src) and _under(target, dst) and not _under(target, src)]
    return out


def _package_sources():
    mods = package_modules()
    sources = {name: path.read_text() for name, (path, _) in mods.items() if path.suffix == ".py"}
    return sources, set(mods), {name for name, (_, pkg) in mods.items() if pkg}


def test_every_import_in_the_package_follows_the_layer_order():
    sources, known, packages = _package_sources()
    assert "compressops.nn.int8_linear" in sources and "compressops.convert" in sources  # the walk found them
    bad = violations(sources, known, packages)
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_the_checker_catches_upward_local_and_relative_imports():
    known = {"compressops", "compressops.nn", "compressops.nn.fake", "compressops.convert", "compressops.ops",
             "compressops.reference", "compressops.triton", "compressops.triton.fake",
             "compressops.formats", "compressops.formats.fake", "compressops.configs", "compressops.configs.fake",
             "compressops.isa", "compressops.bench", "compressops.bench.fake"}
    sources = {
        # module level, relative: nn (L4) -> convert (L5)
        "compressops.nn.fake": "from ..convert import convert\nfrom .. import ops\n",
        # function-local, `from .. import <module>`: formats (L1) -> nn (L4)
        "compressops.formats.fake": "def f():\n    if True:\n        from .. import nn\n    return nn\n",
        # absolute, and the configs rule: isa is L0 but outside configs/
        "compressops.configs.fake": "import compressops.isa\nfrom compressops.configs import Config\n",
        # the package root from inside the package is L6
        "compressops.bench.fake": "import compressops as co\n",
        # same layer, but forbidden
        "compressops.triton.fake": "from .. import reference\n",
        "compressops.newthing": "",
    }
    bad = violations(sources, known)
    assert bad == [
        "compressops.configs.fake imports compressops.isa (configs imports nothing outside configs/)",
        "compressops.formats.fake imports compressops.nn (L1 -> L4)",
        "compressops.newthing is in no layer (add it to tests/test_layers.py LAYERS)",
        "compressops.nn.fake imports compressops.convert (L4 -> L5)",
        "compressops.triton.fake imports compressops.reference (the Triton kernels never import reference "
        "(DESIGN.md section 2))",
    ], bad
    # `from . import x` where x is not a module is an import of the package itself
    assert imports_of("from . import Config\n", "compressops.configs", True, known) == ["compressops.configs"]
    assert imports_of("from ..formats import fake\n", "compressops.nn", True, known) == ["compressops.formats.fake"]
    assert imports_of("from .. import formats\n", "compressops.nn.fake", False, known) == ["compressops.formats"]


# Files that must stay generic: a family is added by new files, never by a line here.
GENERIC_FILES = ["convert.py", "io.py", "report.py", "__init__.py", "nn/__init__.py", "configs/__init__.py",
                 "__main__.py"]


def test_generic_files_name_no_family():
    fams = co.configs.families()
    names = {f.name for f in fams} | {f.config.__name__ for f in fams} | {t.__name__ for f in fams for t in f.modules}
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b", re.IGNORECASE)
    found = []
    for rel in GENERIC_FILES:
        for i, line in enumerate((PACKAGE / rel).read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"compressops/{rel}:{i}: {line.strip()}")
    assert not found, "family names in generic files:\n" + "\n".join(found)


def test_no_merge_markers():
    # "# [int4 ops]": the hand-kept index of the places a family used to touch
    marker = re.compile(r"#\s*\[[a-z0-9_ ]+\]")
    found = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if marker.search(line)]
    assert not found, found
