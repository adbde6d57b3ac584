"""Reading a detectron2 yaml and its ``_BASE_`` chain: every key with its value and the file that set it.

The provenance per key is what lets a refusal name the file to edit (``config.load_config``).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocess.densepose.config_defaults import DEFAULTS, is_inert
from shards.yamlfile import load_mapping


class ConfigError(ValueError):
    """A config file we cannot read, or one that asks for something this port does not implement."""


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # the file that set it, or "default"


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict[str, Setting]:
    """One file and its ``_BASE_`` chain, flattened to dotted keys; later files override earlier ones."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{path}: _BASE_ chain loops: {cycle}")
    where = f" (the _BASE_ of {chain[-1]})" if chain else ""
    data = load_mapping(path, what="config file", hint=where, error=ConfigError)
    merged: dict[str, Setting] = {}
    base = data.pop("_BASE_", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: _BASE_ must name a file, got {base!r}")
        if base.startswith(("http://", "https://")):
            raise ConfigError(f"{path}: _BASE_ {base!r} is a URL; configs are read from local files only")
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        merged.update(_read_yaml(base_path.resolve(), (*chain, path)))
    for key, value in _flatten(data, "", path):
        merged[key] = Setting(_decode(value), str(path))
    return merged


def _flatten(node: dict, prefix: str, path: Path):
    for key, value in node.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: config keys must be strings, got {key!r} under {prefix or 'the top level'}")
        if key == "_BASE_":
            raise ConfigError(f"{path}: _BASE_ is allowed only at the top level, found under {prefix[:-1]}")
        full = prefix + key
        if isinstance(value, dict) and not is_inert(full):
            yield from _flatten(value, full + ".", path)
        else:
            yield full, value


def _decode(value: Any) -> Any:
    """yacs decodes string values with literal_eval ("(800,)" is a tuple); plain words stay strings."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check a value against the default's type, as yacs does (tuples and lists are interchangeable)."""
    default = DEFAULTS[key]

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key} = {value!r}: expected {expected}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise fail("True or False")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if key == "MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NONLOCAL_ON" and isinstance(value, bool):
            return int(value)
        raise fail("an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail("a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise fail("a string")
    if isinstance(value, (list, tuple)):  # the remaining defaults are all tuples
        return _to_tuple(value)
    raise fail("a list")


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value


def read_settings(path: str | os.PathLike) -> dict[str, Setting]:
    """Defaults overridden by the file's ``_BASE_`` chain: every inference key with its value and source.

    Unknown keys are refused (naming the file), inert keys (training, data sets) are dropped.
    """
    path = Path(path).resolve()
    settings = {key: Setting(value, "default") for key, value in DEFAULTS.items()}
    for key, setting in _read_yaml(path, ()).items():
        if key in DEFAULTS:
            settings[key] = Setting(_coerce(key, setting.value, setting.source), setting.source)
        elif not is_inert(key):
            raise ConfigError(f"{setting.source}: unknown config key {key} (not a detectron2 or DensePose key)")
    return settings
