"""The op schemas of csrc/ops.cpp, for defining the ops from Python when the native library is absent.

csrc/ops.cpp is the only place a schema is written. setup.py reads the `m.def("...")` strings of
its TORCH_LIBRARY block before every build (parse_ops_cpp below) and writes _schemas.json next to
this file; a source checkout that was never built has no json, so the same parser then reads
../csrc/ops.cpp directly. Internal ops (names starting with "_") have C++ bodies and are left out.
tests/test_registry.py asserts these strings equal what the native library registers.

This module imports nothing from the package: setup.py loads it by path, before anything is built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_PKG = Path(__file__).resolve().parent
JSON_PATH = _PKG / "_schemas.json"
OPS_CPP = _PKG.parent / "csrc" / "ops.cpp"

# A C++ string literal, and a run of adjacent ones (the compiler concatenates them).
_LITERAL = r'"(?:[^"\\\n]|\\.)*"'
_DEF = re.compile(r"\bm\.def\(\s*((?:" + _LITERAL + r"\s*)+)")
_BLOCK = re.compile(r"TORCH_LIBRARY\(\s*compressops\s*,\s*m\s*\)\s*\{")


def _strip_comments(src: str) -> str:
    """C++ source without // and /* */ comments (string literals kept intact)."""
    token = re.compile(_LITERAL + r"|//[^\n]*|/\*.*?\*/", re.S)
    return token.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", src)


def parse_ops_cpp(src: str) -> dict[str, str]:
    """{op name: schema without the name} for every public m.def of the TORCH_LIBRARY(compressops, m) block.

    Example: m.def("int8_pack_weight(Tensor w_q) -> Tensor") gives
    {"int8_pack_weight": "(Tensor w_q) -> Tensor"}.
    """
    src = _strip_comments(src)
    start = _BLOCK.search(src)
    if start is None:
        raise ValueError("no TORCH_LIBRARY(compressops, m) block found")
    depth, end = 1, start.end()
    while depth:  # the block ends at its matching brace (schemas hold no braces)
        depth += {"{": 1, "}": -1}.get(src[end], 0)
        end += 1
    schemas = {}
    for m in _DEF.finditer(src, start.end(), end):
        text = "".join(re.findall(r'"((?:[^"\\\n]|\\.)*)"', m.group(1)))
        name, paren, rest = text.partition("(")
        name = name.strip()
        if not name.startswith("_"):
            schemas[name] = paren + rest
    return schemas


def write_json(ops_cpp: Path = OPS_CPP, out: Path = JSON_PATH) -> None:
    """Write out (default _schemas.json) from ops_cpp; setup.py calls this before every build.

    The file is rewritten only when its content changes, so rebuilds stay incremental.
    """
    text = json.dumps({"generated_by": "setup.py from csrc/ops.cpp (compressops/_schemas.py); do not edit",
                       "schemas": parse_ops_cpp(ops_cpp.read_text())}, indent=1) + "\n"
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


def _load() -> dict[str, str]:
    if JSON_PATH.exists():
        return json.loads(JSON_PATH.read_text())["schemas"]
    if OPS_CPP.exists():
        return parse_ops_cpp(OPS_CPP.read_text())
    raise RuntimeError(f"compressops: neither {JSON_PATH} nor {OPS_CPP} exists, so the op schemas are unknown; "
                       "reinstall the package (its build writes _schemas.json)")


SCHEMAS: dict[str, str]  # {op name: schema}, loaded on first use (setup.py needs only the parser)


def __getattr__(name: str):
    if name == "SCHEMAS":
        globals()["SCHEMAS"] = _load()
        return globals()["SCHEMAS"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
