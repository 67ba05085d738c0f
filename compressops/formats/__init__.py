"""Canonical and prepacked formats, one module per format (see each module's docstring)."""
