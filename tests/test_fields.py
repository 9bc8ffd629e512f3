"""Cached config field names (fast key checks) equal the imported classes' fields."""

import dataclasses
import importlib

import pytest

from align.fields import PEFT_CONFIGS, TRL_CONFIGS, _cache_file, dataclass_fields


@pytest.mark.parametrize("module,name", [*TRL_CONFIGS.values(),
                                         *((m, n) for n, m in PEFT_CONFIGS.items())])
def test_cached_fields_equal_imported_fields(module, name, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))
    cls = getattr(importlib.import_module(module), name)
    expected = tuple(f.name for f in dataclasses.fields(cls))
    assert dataclass_fields(module, name) == expected  # imported once, then cached
    cached = _cache_file(module, name)
    assert cached.is_file() and str(tmp_path) in str(cached)
    assert dataclass_fields(module, name) == expected  # from the cache
    cached.write_text("not json")  # a damaged cache is rebuilt, not trusted
    assert dataclass_fields(module, name) == expected
