"""Config fields that name a torch dtype: stored as the dtype's name so configs stay plain data."""

from __future__ import annotations


def dtype_name(dtype, label: str, allowed: tuple[str, ...]) -> str | None:
    """None, a torch.dtype or its name -> the canonical name (or None).

    Raises:
        ValueError: a dtype outside `allowed` (the message starts with `label`).
    """
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name not in allowed:
        raise ValueError(f"{label}: dtype must be None or one of {', '.join(allowed)}, got {dtype!r}")
    return name


def torch_dtype(name: str | None, default=None):
    """The torch.dtype called `name`, or `default` when name is None."""
    import torch

    return getattr(torch, name) if name is not None else default
