"""Every config checks the types of its fields when it is built: a wrong type raises TypeError naming
the field, instead of failing later in an algorithm or kernel (issue 18: Int4(group_size=128.0))."""

import dataclasses
import typing

import numpy as np
import pytest

import compressops as co

CONFIGS = sorted(co.configs.config_types(), key=lambda c: c.__name__)


def _typed_fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if hints[f.name] is not object]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_default_config_builds_and_keeps_plain_types(cls):
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg


WRONG = {int: [128.0, "128", True, None], float: ["0.5", True], bool: [1, "yes", None], str: [3, b"x", None]}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_wrong_field_types_raise_naming_the_field(cls):
    checked = 0
    for name, hint in _typed_fields(cls):
        allowed = set(typing.get_args(hint)) or {hint}
        for plain, wrong_values in WRONG.items():
            if plain not in allowed:
                continue
            for value in wrong_values:
                if value is None and type(None) in allowed:
                    continue
                with pytest.raises(TypeError, match=rf"{cls.__name__}\({name}=.*\): {name} must be "):
                    cls(**{name: value})
                checked += 1
    assert checked or not _typed_fields(cls)


@pytest.mark.parametrize("make, field, value", [
    (lambda v: co.Int4(group_size=v), "group_size", 64),
    (lambda v: co.PQ(num_centroids=v), "num_centroids", 16),
    (lambda v: co.CSR(sparsity=v), "sparsity", 0.5),
])
def test_numpy_scalars_become_plain_python_values(make, field, value):
    cfg = make(np.asarray(value)[()])
    assert getattr(cfg, field) == value and type(getattr(cfg, field)) is type(value)
    assert cfg.to_dict()[field] == value  # stays JSON-serializable for compressops.save


def test_reported_cases_from_the_issue():
    with pytest.raises(TypeError, match="group_size must be int, got float"):
        co.Int4(group_size=128.0)
    with pytest.raises(TypeError, match="num_centroids must be int, got float"):
        co.PQ(num_centroids=16.0)
    with pytest.raises(TypeError, match="sparsity must be float or None, got str"):
        co.CSR(sparsity="0.5")
