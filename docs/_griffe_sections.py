"""Griffe extension (mkdocs.yml, mkdocstrings `extensions:`): reads compressops's docstring layout.

compressops writes Google-style sections without a blank line between them:

    Args:
        x: float32 (..., K).
    Returns:
        (..., N) in x's dtype.

Griffe's Google parser treats a section title only after a blank line and otherwise renders the
title and its block as plain text, unchecked. This extension inserts that blank line in the text
griffe parses (the source is unchanged), so every Args/Returns/Raises/... section is parsed, rendered
as a section and checked by the strict build. "Gradient:" (the ops' autograd notes) becomes an
admonition the same way.
"""

import re

import griffe

_TITLE = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Warns|Attributes|Example|Examples|Note|Notes|"
                    r"Gradient)\s*:\s*$")


def blank_line_before_sections(text: str) -> str:
    """`text` with an empty line inserted before every unindented section title that follows text."""
    out: list[str] = []
    for line in text.split("\n"):
        if _TITLE.match(line) and out and out[-1].strip():
            out.append("")
        out.append(line)
    return "\n".join(out)


class SectionsWithoutBlankLines(griffe.Extension):
    """Applies blank_line_before_sections to every docstring griffe loads."""

    def on_instance(self, *, node, obj, agent, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = blank_line_before_sections(obj.docstring.value)
